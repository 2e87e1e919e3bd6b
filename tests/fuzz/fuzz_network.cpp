// libFuzzer harness: any bytes as a network description. Every input must end
// in a parsed network or an anvil::InputError; a crash, an abort, a sanitizer
// report or any other exception is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "anvil/error.hpp"
#include "anvil/network.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const anvil::Network net =
        anvil::Network::parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
    (void)net.output_shape();
  } catch (const anvil::InputError&) {
  }
  return 0;
}
