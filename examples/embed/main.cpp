// Embeds anvil: load a network, train it for a few steps, read a gradient back.
// Usage: embed_example NET.json [steps]
#include <anvil/engine.hpp>
#include <anvil/error.hpp>
#include <anvil/version.hpp>

#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s NET.json [steps]\n", argv[0]);
    return 2;
  }
  std::printf("%s\n", anvil::build_info().c_str());
  try {
    const anvil::Network net = anvil::Network::load(argv[1]);
    anvil::Options options;  // cuda when a GPU is present, else the CPU reference backend
    anvil::Engine engine(net, options);
    const int steps = argc > 2 ? std::atoi(argv[2]) : 3;
    for (int i = 0; i < steps; ++i) std::printf("step %d loss %.6f\n", i + 1, engine.train_step());
    for (const auto& [name, grad] : engine.gradients())
      std::printf("%s: %lld gradient values\n", name.c_str(), static_cast<long long>(grad.size()));
    return 0;
  } catch (const anvil::InputError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
