// The reference-case check shared by the CPU and GPU parity suites: forward
// output, loss, every parameter gradient, the input gradient, the N-step loss
// trajectory and the parameters after N optimizer steps, against PyTorch
// float64. N is the reference file's metadata "steps" (3 where absent).
#pragma once

#include "tests/test_support.hpp"

namespace anvil::testing {

inline const std::vector<std::string>& reference_cases() {
  static const std::vector<std::string> cases = {
      "kb74_small",         "odd_sizes",         "stride1_nopad", "variant_2d",   "residual_dag", "adam_step",
      "adamw_cosine",       "sgd_step_schedule", "activations",   "relu_avgpool", "dcgan_2d",     "stride1_block",
      "transposed_fan_out", "direct_stems",      "generated_31",  "generated_53", "dag_fanout"};
  return cases;
}

// input_grad_tol: the network-input gradient is a sum of terms far larger than
// itself in some cases, so under TF32 (10-bit operands) its relative error is
// larger than every other quantity's; callers pass the bound they justify.
inline void check_reference_case(const std::string& name, const Options& base, const nlohmann::json& overrides,
                                 double tol, double input_grad_tol) {
  const Network net = network_with(data_path(name + ".json"), overrides);
  const TensorFile ref = read_safetensors(data_path(name + ".safetensors"));
  Engine engine(net, base);

  // The engine's own initial parameters come from the generator that the reference used.
  const auto initial = engine.parameters();
  for (const auto& [pname, value] : initial) EXPECT_TRUE(close("initial " + pname, value, ref.tensors.at(pname), 1e-6));
  engine.load_parameters(same_names(ref, initial));
  engine.set_input(ref.tensors.at("input"));
  engine.set_target(ref.tensors.at("target"));

  EXPECT_TRUE(close("output", engine.forward(), ref.tensors.at("output"), tol));
  const HostTensor& losses = ref.tensors.at("losses");
  const float loss = engine.train_step();
  EXPECT_NEAR(loss, losses.data[0], tol * std::fabs(losses.data[0])) << "loss of step 1";
  for (const auto& [pname, grad] : engine.gradients())
    EXPECT_TRUE(close("grad." + pname, grad, ref.tensors.at("grad." + pname), tol));
  if (base.input_grad) {  // checked wherever the engine computes it
    EXPECT_TRUE(close("grad.input", engine.input_gradient(), ref.tensors.at("grad.input"), input_grad_tol));
  }
  const auto steps_entry = ref.metadata.find("steps");
  const int steps = steps_entry == ref.metadata.end() ? 3 : std::stoi(steps_entry->second);
  ASSERT_EQ(losses.data.size(), size_t(steps)) << "losses of " << name;
  for (int step = 1; step < steps; ++step) {
    const float l = engine.train_step();
    EXPECT_NEAR(l, losses.data[step], tol * std::fabs(losses.data[step])) << "loss of step " << step + 1;
  }
  const std::string after = "after" + std::to_string(steps) + ".";
  for (const auto& [pname, value] : engine.parameters())
    EXPECT_TRUE(close(after + pname, value, ref.tensors.at(after + pname), tol));
}

}  // namespace anvil::testing
