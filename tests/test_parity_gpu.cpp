// The CUDA backend against PyTorch references and against the CPU reference.
// Every test skips visibly without a GPU and fails instead when ANVIL_REQUIRE_GPU=1.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iterator>
#include <map>
#include <random>
#include <regex>

#include "kernels/cuda/tensor_cores.hpp"
#include "kernels/cuda/wgmma_conv.hpp"
#include "kernels/tf32.hpp"
#include "tests/generated_networks.hpp"
#include "tests/gpu_test_util.hpp"
#include "tests/parity.hpp"

namespace anvil::testing {
namespace {

Options cuda_options() {
  Options o;
  o.device = Device::Cuda;
  return o;
}

// The ways a CUDA engine runs a fused chain. All compute the input gradient
// except "phase_split_no_dx", which (like a network's first layer) does not
// and so takes the tensor-core weight-gradient kernel over the sparse dY.
// "dgrad" fuses with cuDNN's conv only: no phase split, no direct or wgmma conv.
const std::vector<std::string> kModes = {"phase_split", "phase_split_no_dx", "dgrad", "unfused"};

Options cuda_options(const std::string& mode) {
  Options o = cuda_options();
  o.fuse = mode != "unfused";
  o.phase_split = mode.rfind("phase_split", 0) == 0;
  o.direct_conv = o.phase_split;
  o.wgmma_conv = o.phase_split;
  o.input_grad = mode != "phase_split_no_dx";
  return o;
}

// ---- stored PyTorch cases, both precisions, fused and unfused ----

struct GpuCase {
  std::string name, precision, mode;
};

std::vector<GpuCase> gpu_cases() {
  std::vector<GpuCase> out;
  for (const auto& name : reference_cases())
    for (const char* precision : {"fp32", "tf32"})
      for (const auto& mode : kModes) out.push_back({name, precision, mode});
  return out;
}

class GpuParity : public ::testing::TestWithParam<GpuCase> {};

// Under TF32 the network-input gradient of kb74_small is a sum of terms ~100x its size; measured on the
// H100 its relative error is 1.6e-2 for anvil and for PyTorch's own TF32 conv (tools/bench_vs_torch.py
// prints both). Everything else, including every parameter gradient, stays within 5e-3.
constexpr double kTf32InputGradTol = 2.5e-2;

// The values rounded to TF32 (nearest), so that TF32 products of them are exact.
HostTensor tf32_exact(HostTensor t) {
  for (float& v : t.data) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits = tf32_round_bits(bits);
    std::memcpy(&v, &bits, sizeof v);
  }
  return t;
}

// Loads the engine's parameters and a fresh uniform [-1, 1] input, all exact in TF32, into each engine it
// prepares: the TF32 forward's products are then exact, so its conv outputs differ from float32's by the
// order of summation alone, and a max pool's window picks the element float32 picks. (With float32 values,
// window maxima within TF32's error of each other move under TF32, each taking its window's gradient to
// another element: measured 7.6e-3 on a 64-channel max-pool chain's weight gradient.)
std::function<void(Engine&)> tf32_exact_values(const Engine& engine, const Shape& input_shape) {
  std::map<std::string, HostTensor> params = engine.parameters();
  for (auto& [name, tensor] : params) tensor = tf32_exact(tensor);
  std::mt19937 rng(41);
  HostTensor x;
  x.shape = input_shape;
  x.data = random_floats(size_t(numel(input_shape)), rng);
  x = tf32_exact(x);
  return [params, x](Engine& e) {
    e.load_parameters(params);
    e.set_input(x);
  };
}

TEST_P(GpuParity, MatchesPyTorchForwardGradientsAndOptimizerSteps) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const GpuCase& c = GetParam();
  const double tol = c.precision == "fp32" ? 1e-5 : 5e-3;
  const double input_grad_tol = c.precision == "fp32" ? 1e-5 : kTf32InputGradTol;
  check_reference_case(c.name, cuda_options(c.mode), {{"precision", c.precision}}, tol, input_grad_tol);
}

// Non-deterministic mode may take any cuDNN algorithm (the fastest Find measured): still the same results.
TEST(GpuNondeterministic, FastestAlgorithmsMatchPyTorch) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  for (const auto& mode : {"phase_split", "dgrad", "unfused"}) {
    SCOPED_TRACE(mode);
    Options o = cuda_options(mode);
    o.deterministic = false;
    check_reference_case("kb74_small", o, {{"precision", "fp32"}}, 1e-5, 1e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(ReferenceCases, GpuParity, ::testing::ValuesIn(gpu_cases()), [](const auto& info) {
  return info.param.name + "_" + info.param.precision + "_" + info.param.mode;
});

// ---- the full KernelBench size: inputs regenerated, reference subsampled ----

class GpuFullSize : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(GpuFullSize, HeadlineNetworkMatchesPyTorch) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const auto& [precision, mode] = GetParam();
  const double tol = precision == "fp32" ? 1e-5 : 5e-3;
  const Network net = network_with(source_path("examples/kernelbench74.json"), {{"precision", precision}});
  const TensorFile ref = read_safetensors(data_path("kb74_full.safetensors"));
  Engine engine(net, cuda_options(mode));  // parameters, input and target from the generator, as the reference
  for (const auto& [pname, value] : engine.parameters())
    EXPECT_TRUE(close("initial " + pname, value, ref.tensors.at(pname), 1e-6));

  const HostTensor y = engine.forward();
  const HostTensor& index = ref.tensors.at("output.index");
  HostTensor sample(index.shape);
  double norm2 = 0, sum = 0;
  for (int64_t i = 0; i < index.size(); ++i) sample.data[i] = y.data[static_cast<int64_t>(index.data[i])];
  for (float v : y.data) norm2 += double(v) * v, sum += v;
  EXPECT_TRUE(close("output sample", sample, ref.tensors.at("output.sample"), tol));
  EXPECT_NEAR(std::sqrt(norm2), ref.tensors.at("output.norm").data[0], tol * ref.tensors.at("output.norm").data[0]);
  EXPECT_NEAR(sum, ref.tensors.at("output.sum").data[0], tol * std::fabs(ref.tensors.at("output.sum").data[0]));

  const HostTensor& losses = ref.tensors.at("losses");
  EXPECT_NEAR(engine.train_step(), losses.data[0], tol * losses.data[0]);
  for (const auto& [pname, grad] : engine.gradients())
    EXPECT_TRUE(close("grad." + pname, grad, ref.tensors.at("grad." + pname), tol));
  if (engine.options().input_grad) {
    double dx2 = 0;
    for (float v : engine.input_gradient().data) dx2 += double(v) * v;
    const float dx_norm = ref.tensors.at("grad.input.norm").data[0];
    EXPECT_NEAR(std::sqrt(dx2), dx_norm, tol * dx_norm) << "input gradient norm";
  }
  for (int step = 1; step < 3; ++step)
    EXPECT_NEAR(engine.train_step(), losses.data[step], tol * losses.data[step]) << "loss of step " << step + 1;
  for (const auto& [pname, value] : engine.parameters())
    EXPECT_TRUE(close("after3." + pname, value, ref.tensors.at("after3." + pname), tol));
}

INSTANTIATE_TEST_SUITE_P(PrecisionsAndModes, GpuFullSize,
                         ::testing::Combine(::testing::Values("fp32", "tf32"),
                                            ::testing::Values("phase_split", "phase_split_no_dx", "dgrad")),
                         [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param); });

// ---- GPU against the CPU reference on odd shapes, every layer, fused and unfused ----

struct SmallNet {
  std::string label, json;
};

std::string net_json(const std::string& name, const std::string& input, const std::string& layers) {
  return R"({"name": ")" + name + R"(", "input": )" + input + R"(, "precision": "fp32", "seed": 17,
    "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}, "layers": [)" +
         layers + "]}";
}

std::vector<SmallNet> small_nets() {
  const std::string tail3 = R"({"type": "leaky_relu", "negative_slope": 0.2}, {"type": "channel_scale"},
                              {"type": "leaky_relu", "negative_slope": 0.1},)";
  return {
      {"batch1_channel1_k2", net_json("a", "[1, 1, 3, 5, 4]",
                                      R"(
        {"type": "conv_transpose3d", "in_channels": 1, "out_channels": 3, "kernel_size": 2, "stride": 2},)" +
                                          tail3 + R"({"type": "max_pool3d", "kernel_size": 2})")},
      {"k4_s3_op2_mixed_pool", net_json("b", "[2, 3, 3, 4, 5]", R"(
        {"type": "conv_transpose3d", "in_channels": 3, "out_channels": 4, "kernel_size": 4, "stride": 3,
         "padding": 1, "output_padding": 2},)" + tail3 + R"({"type": "max_pool3d", "kernel_size": [2, 1, 2]})")},
      {"two_d_to_one_channel", net_json("c", "[3, 5, 7, 9]", R"(
        {"type": "conv_transpose2d", "in_channels": 5, "out_channels": 1, "kernel_size": 3, "stride": 2,
         "padding": 1, "output_padding": 1},)" + tail3 + R"({"type": "max_pool2d", "kernel_size": 2})")},
      {"conv_dilated_unfusable_pool", net_json("d", "[2, 2, 9, 8, 7]", R"(
        {"type": "conv3d", "in_channels": 2, "out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1,
         "dilation": 2},)" + tail3 + R"({"type": "max_pool3d", "kernel_size": 2})")},
      {"relu_avgpool_conv_maxpool", net_json("e", "[2, 2, 4, 5, 6]", R"(
        {"type": "conv_transpose3d", "in_channels": 2, "out_channels": 3, "kernel_size": 3, "stride": 2},
        {"type": "relu"}, {"type": "avg_pool3d", "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "conv3d", "in_channels": 3, "out_channels": 2, "kernel_size": 2, "bias": false},
        {"type": "max_pool3d", "kernel_size": 3, "stride": 1})")},
      {"residual_2d", net_json("f", "[2, 3, 11, 10]", R"(
        {"type": "conv2d", "name": "stem", "in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "leaky_relu", "name": "act", "negative_slope": 0.2},
        {"type": "conv2d", "in_channels": 4, "out_channels": 4, "kernel_size": [4, 3], "padding": [2, 1], "stride": [1, 1],
         "dilation": [1, 1]},
        {"type": "avg_pool2d", "kernel_size": [2, 1], "stride": 1},
        {"type": "add", "inputs": ["act", "avg_pool2d_3", "act"]},
        {"type": "channel_scale"},
        {"type": "max_pool2d", "kernel_size": 2, "stride": 1, "padding": 1})")},
      // The tensor-core weight gradient with 3 M tiles, 2 N tiles and rows of two K steps (37 = 32 + 5).
      {"weight_grad_many_tiles", net_json("h", "[2, 19, 3, 2, 37]", R"(
        {"type": "conv_transpose3d", "in_channels": 19, "out_channels": 37, "kernel_size": 3, "stride": 2,
         "padding": 1, "output_padding": 1},)" + tail3 + R"({"type": "max_pool3d", "kernel_size": 2})")},
      {"window_64_no_bias", net_json("g", "[1, 2, 2, 2, 2]",
                                     R"(
        {"type": "conv_transpose3d", "in_channels": 2, "out_channels": 5, "kernel_size": 3, "stride": 2,
         "padding": 1, "output_padding": 1, "bias": false},)" +
                                         tail3 + R"({"type": "max_pool3d", "kernel_size": 4})")},

      // The general fusion rule: any chain, any pool or none.
      {"relu_avgpool_batch1_channel1", net_json("i", "[1, 1, 5, 7, 9]", R"(
        {"type": "conv3d", "in_channels": 1, "out_channels": 1, "kernel_size": 3, "padding": 1},
        {"type": "relu"}, {"type": "avg_pool3d", "kernel_size": 2})")},
      {"sigmoid_scale_tanh_avg_overlap_2d", net_json("j", "[2, 3, 9, 11]", R"(
        {"type": "conv_transpose2d", "in_channels": 3, "out_channels": 4, "kernel_size": 4, "stride": 2,
         "padding": 1},
        {"type": "sigmoid"}, {"type": "channel_scale"}, {"type": "tanh"},
        {"type": "avg_pool2d", "kernel_size": 3, "stride": 2, "padding": 1})")},
      {"patchify_no_pool_3d", net_json("k", "[2, 3, 4, 6, 8]", R"(
        {"type": "conv3d", "in_channels": 3, "out_channels": 5, "kernel_size": 2, "stride": 2},
        {"type": "relu"}, {"type": "channel_scale"}, {"type": "relu"})")},
      {"negative_and_steep_slopes_two_scales_overlap_max", net_json("l", "[2, 2, 5, 6, 7]", R"(
        {"type": "conv3d", "in_channels": 2, "out_channels": 3, "kernel_size": [3, 2, 3], "stride": [1, 2, 1],
         "padding": 1, "bias": false},
        {"type": "leaky_relu", "negative_slope": -0.3}, {"type": "channel_scale"},
        {"type": "leaky_relu", "negative_slope": 1.7}, {"type": "channel_scale"},
        {"type": "max_pool3d", "kernel_size": 3, "stride": 2, "padding": 1})")},
      {"stride1_conv_transpose_leaky_only_tiled_max", net_json("m", "[3, 2, 6, 5]", R"(
        {"type": "conv_transpose2d", "in_channels": 2, "out_channels": 3, "kernel_size": 3, "stride": 1,
         "padding": 1},
        {"type": "leaky_relu", "negative_slope": 0.2}, {"type": "max_pool2d", "kernel_size": [2, 1]})")},
      // Phase split with chains other than the headline's: relu (slope 0, not
      // monotone), a steep slope (monotone) and a smooth activation (per phase).
      {"phase_split_relu_scale", net_json("n", "[2, 3, 3, 4, 5]", R"(
        {"type": "conv_transpose3d", "in_channels": 3, "out_channels": 4, "kernel_size": 3, "stride": 2,
         "padding": 1, "output_padding": 1},
        {"type": "relu"}, {"type": "channel_scale"}, {"type": "max_pool3d", "kernel_size": 2})")},
      {"phase_split_steep_leaky_sigmoid", net_json("o", "[2, 5, 7, 9]", R"(
        {"type": "conv_transpose2d", "in_channels": 5, "out_channels": 3, "kernel_size": 4, "stride": 2,
         "padding": 1},
        {"type": "leaky_relu", "negative_slope": 1.5}, {"type": "channel_scale"}, {"type": "sigmoid"},
        {"type": "max_pool2d", "kernel_size": 2})")},
      // k4 s2 p1 in 3-D: cuDNN's conv over shifted phases (8 combined taps, not
      // 27); 6 * 27 inputs per output are too many for the fused tensor-core
      // forward, so without dx too the backward is the shifted combined conv's
      // (its filter gradient on anvil's tensor-core GEMM under fp32), not the
      // aligned 27-tap argmax kernel.
      {"phase_split_shifted_k4_3d", net_json("r", "[1, 6, 3, 4, 5]", R"(
        {"type": "conv_transpose3d", "in_channels": 6, "out_channels": 3, "kernel_size": 4, "stride": 2,
         "padding": 1},)" + tail3 + R"({"type": "max_pool3d", "kernel_size": 2})")},
      // A pool outside a chain: anvil's kernel, its input gradient added to
      // the add's (fan-out); an overlapping padded max pool. The average pool
      // after the add fuses with it (the add rule).
      {"standalone_pools_fan_out", net_json("q", "[2, 3, 7, 9]", R"(
        {"type": "conv2d", "name": "c", "in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "leaky_relu", "name": "a", "negative_slope": 0.1, "inputs": ["c"]},
        {"type": "max_pool2d", "name": "p", "kernel_size": 3, "stride": 1, "padding": 1, "inputs": ["a"]},
        {"type": "add", "name": "s", "inputs": ["a", "p"]},
        {"type": "avg_pool2d", "name": "q", "kernel_size": [2, 3], "stride": [2, 1], "padding": [1, 1],
         "inputs": ["s"]})")},
      // anvil's direct conv (few taps per output): a k4 s2 stem whose 13
      // channels leave a partial group, overlapping padded average windows; a
      // gray stride-3 stem with a tiled max pool (y at the argmax saved); a
      // dilated, padded, strided conv with a smooth chain and no pool.
      {"direct_gray_k4_stem_avg_overlap", net_json("s", "[2, 1, 10, 14]", R"(
        {"type": "conv2d", "in_channels": 1, "out_channels": 13, "kernel_size": 4, "stride": 2, "padding": 1},
        {"type": "relu"}, {"type": "avg_pool2d", "kernel_size": 3, "stride": 2, "padding": 1})")},
      // leaky_relus of slopes negative, above 1 and 0: codes of 3 bits saved for backward.
      {"direct_leaky_chain_avg_3x2", net_json("c", "[2, 2, 9, 12]", R"(
        {"type": "conv2d", "in_channels": 2, "out_channels": 5, "kernel_size": 3},
        {"type": "leaky_relu", "negative_slope": -0.5}, {"type": "leaky_relu", "negative_slope": 1.5},
        {"type": "relu"}, {"type": "avg_pool2d", "kernel_size": [3, 2], "stride": 2})")},
      {"direct_gray_stride3_tiled_max_3d", net_json("t", "[1, 1, 7, 9, 12]",
                                                    R"(
        {"type": "conv3d", "in_channels": 1, "out_channels": 9, "kernel_size": [1, 3, 3], "stride": [1, 3, 3]},)" +
                                                        tail3 + R"({"type": "max_pool3d", "kernel_size": [1, 1, 2]})")},
      {"direct_dilated_sigmoid_no_pool", net_json("u", "[2, 2, 9, 11]", R"(
        {"type": "conv2d", "in_channels": 2, "out_channels": 20, "kernel_size": [3, 2], "stride": [1, 2],
         "padding": [2, 0], "dilation": [2, 1]},
        {"type": "sigmoid"}, {"type": "channel_scale"})")},
      // The add rule: a two-input add, the chain and the pool after it as one
      // kernel. A residual block (relu after the join, no pool); a join
      // followed by a scale, a negative slope and an overlapping padded max
      // pool; the network input added to itself (both gradients in one
      // buffer, and without dx only the multiplier's gradient) before a sigmoid
      // and an average pool.
      {"residual_add_relu_no_pool_2d", net_json("v", "[2, 3, 7, 9]", R"(
        {"type": "conv2d", "name": "stem", "in_channels": 3, "out_channels": 5, "kernel_size": 3, "padding": 1},
        {"type": "leaky_relu", "name": "act", "negative_slope": 0.1},
        {"type": "conv2d", "name": "branch", "in_channels": 5, "out_channels": 5, "kernel_size": 3, "padding": 1},
        {"type": "channel_scale", "name": "gain"},
        {"type": "add", "name": "sum", "inputs": ["act", "gain"]},
        {"type": "relu"})")},
      {"residual_add_scale_overlap_max_3d", net_json("w", "[2, 2, 5, 6, 7]", R"(
        {"type": "conv3d", "name": "stem", "in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": 1},
        {"type": "tanh", "name": "act"},
        {"type": "conv3d", "name": "branch", "in_channels": 3, "out_channels": 3, "kernel_size": [1, 3, 3],
         "padding": [0, 1, 1], "bias": false},
        {"type": "add", "name": "sum", "inputs": ["branch", "act"]},
        {"type": "channel_scale"}, {"type": "leaky_relu", "negative_slope": -0.4},
        {"type": "max_pool3d", "kernel_size": 3, "stride": 2, "padding": 1})")},
      {"add_input_to_itself_scale_avg", net_json("x", "[2, 3, 6, 5]", R"(
        {"type": "add", "name": "twice", "inputs": ["input", "input"]},
        {"type": "channel_scale"}, {"type": "sigmoid"},
        {"type": "avg_pool2d", "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "conv2d", "in_channels": 3, "out_channels": 2, "kernel_size": 2})")},
      // Strided backward-data relations (phase-split under strict fp32): the
      // transposed conv's output (7 x 8) is not a multiple of its stride, and
      // the strided conv's input gradient adds to the add's (fan-out).
      {"strided_dgrad_fan_out_ragged_2d", net_json("y", "[2, 3, 7, 8]", R"(
        {"type": "conv2d", "name": "stem", "in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "leaky_relu", "name": "act", "negative_slope": 0.1},
        {"type": "conv2d", "name": "down", "in_channels": 4, "out_channels": 5, "kernel_size": 3, "stride": 2,
         "padding": 1},
        {"type": "conv_transpose2d", "name": "up", "in_channels": 5, "out_channels": 4, "kernel_size": 3,
         "stride": 2, "padding": 1, "output_padding": [0, 1]},
        {"type": "add", "inputs": ["act", "up"]},
        {"type": "relu"}, {"type": "max_pool2d", "kernel_size": 2})")},
      // Nine ops: longer than a fused chain may be; runs unfused.
      {"chain_of_nine_unfused", net_json("p", "[1, 2, 5, 6]", R"(
        {"type": "conv2d", "in_channels": 2, "out_channels": 3, "kernel_size": 3},
        {"type": "relu"}, {"type": "channel_scale"}, {"type": "tanh"}, {"type": "channel_scale"},
        {"type": "leaky_relu", "negative_slope": 0.3}, {"type": "channel_scale"}, {"type": "sigmoid"},
        {"type": "channel_scale"}, {"type": "relu"}, {"type": "avg_pool2d", "kernel_size": 2})")},
  };
}

class GpuVsCpu : public ::testing::TestWithParam<SmallNet> {};

TEST_P(GpuVsCpu, ForwardGradientsAndStepsMatchTheCpuReference) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const Network net = Network::parse(GetParam().json, GetParam().label);
  Options cpu;
  cpu.device = Device::Cpu;
  cpu.input_grad = true;
  Engine reference(net, cpu);
  const HostTensor y_ref = reference.forward();
  std::vector<float> losses_ref;
  for (int i = 0; i < 2; ++i) losses_ref.push_back(reference.train_step());
  const auto grads_ref = reference.gradients();
  const HostTensor dx_ref = reference.input_gradient();
  const auto params_ref = reference.parameters();

  for (const auto& mode : kModes) {
    SCOPED_TRACE(mode);
    Engine engine(net, cuda_options(mode));
    EXPECT_TRUE(close("output", engine.forward(), y_ref, 1e-5));
    for (int i = 0; i < 2; ++i) EXPECT_NEAR(engine.train_step(), losses_ref[i], 1e-5 * losses_ref[i]) << "step " << i;
    for (const auto& [pname, grad] : engine.gradients())
      EXPECT_TRUE(close("grad." + pname, grad, grads_ref.at(pname), 1e-5));
    if (engine.options().input_grad) {
      EXPECT_TRUE(close("grad.input", engine.input_gradient(), dx_ref, 1e-5));
    }
    for (const auto& [pname, value] : engine.parameters()) EXPECT_TRUE(close(pname, value, params_ref.at(pname), 1e-5));
  }
}

INSTANTIATE_TEST_SUITE_P(OddShapes, GpuVsCpu, ::testing::ValuesIn(small_nets()),
                         [](const auto& info) { return info.param.label; });

// Networks no one wrote: random blocks of convs and transposed convs, chains,
// joins and pools (generated_networks.hpp; test_generated_networks.cpp checks
// the same seeds on the host).
std::vector<SmallNet> generated_small_nets() {
  std::vector<SmallNet> nets;
  for (const GeneratedNetwork& g : generated_networks(1, 48)) nets.push_back({g.label, g.json});
  return nets;
}

INSTANTIATE_TEST_SUITE_P(Generated, GpuVsCpu, ::testing::ValuesIn(generated_small_nets()),
                         [](const auto& info) { return info.param.label; });

// The fusion pass actually fires on the patterns meant for it.
TEST(GpuFusion, HeadlinePatternIsFusedAndPhaseSplit) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const Network net = Network::load(data_path("kb74_small.json"));
  const std::string phase = Engine(net, cuda_options("phase_split")).describe();
  EXPECT_NE(phase.find("fused_phase_conv_epilogue"), std::string::npos) << phase;
  EXPECT_EQ(phase.find("tensor-core weight gradient"), std::string::npos) << phase;  // dx needs the whole dY
  const Network fp32 = network_with(data_path("kb74_small.json"), {{"precision", "fp32"}});
  const std::string compensated = Engine(fp32, cuda_options("phase_split_no_dx")).describe();
  EXPECT_NE(compensated.find("3xTF32 tensor-core weight gradient"), std::string::npos) << compensated;
  const std::string tf32 = Engine(net, cuda_options("phase_split_no_dx")).describe();
  EXPECT_NE(tf32.find(", TF32 tensor-core weight gradient"), std::string::npos) << tf32;
  EXPECT_NE(tf32.find("TF32 tensor-core conv fused with the epilogue"), std::string::npos) << tf32;
  const std::string dgrad = Engine(net, cuda_options("dgrad")).describe();
  EXPECT_NE(dgrad.find("[fused_conv_epilogue]"), std::string::npos) << dgrad;
  const std::string unfused = Engine(net, cuda_options("unfused")).describe();
  EXPECT_EQ(unfused.find("fused"), std::string::npos) << unfused;
}

// Under tf32 the filter gradient runs anvil's kernel by rule where W's row
// length (the A side's channels x taps) fits one 128-column tile or W has at
// most 32 rows, else cuDNN's (docs/performance.md, "Filter gradients").
TEST(GpuFusion, Tf32FilterGradientRule) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  if (!cuda::tensor_core_kernels_available()) GTEST_SKIP() << "needs sm_80 or newer";
  // The engine's description of conv -> relu on an input of `channels` channels.
  auto describe = [](int channels, const std::string& conv) {
    std::string json = net_json("w", "[2, " + std::to_string(channels) + ", 9, 9]", conv + R"(, {"type": "relu"})");
    json.replace(json.find(R"("fp32")"), 6, R"("tf32")");
    return Engine(Network::parse(json, "w"), cuda_options("dgrad")).describe();
  };
  const std::string anvil = "ConvolutionBackwardFilter anvil tensor cores (TF32, rule)";
  // W 64 x (8 x 9): one tile wide.
  const std::string narrow =
      describe(8, R"({"type": "conv2d", "in_channels": 8, "out_channels": 64, "kernel_size": 3})");
  EXPECT_NE(narrow.find(anvil), std::string::npos) << narrow;
  // A transposed conv's W is in_channels x (out_channels x taps): rows of 144, anvil's up to 32
  // of them (thin), cuDNN's from 33.
  for (const int rows : {8, 32, 33}) {
    const std::string thin = describe(rows, R"({"type": "conv_transpose2d", "in_channels": )" + std::to_string(rows) +
                                                R"(, "out_channels": 16, "kernel_size": 3, "stride": 2})");
    EXPECT_EQ(thin.find(anvil) != std::string::npos, rows <= 32) << thin;
    EXPECT_NE(thin.find("ConvolutionBackwardFilter"), std::string::npos) << thin;
  }
  // W 64 x (8 x 25): cuDNN's.
  const std::string wide = describe(8, R"({"type": "conv2d", "in_channels": 8, "out_channels": 64, "kernel_size": 5})");
  EXPECT_EQ(wide.find("ConvolutionBackwardFilter anvil"), std::string::npos) << wide;
  EXPECT_NE(wide.find("ConvolutionBackwardFilter"), std::string::npos) << wide;
}

// The general rule fuses every conv + chain + optional pool, and says why a
// chain did not take the phase split.
TEST(GpuFusion, GeneralChainsAreFused) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  for (const SmallNet& net : small_nets()) {
    SCOPED_TRACE(net.label);
    const std::string text = Engine(Network::parse(net.json, net.label), cuda_options("phase_split")).describe();
    if (net.label == "chain_of_nine_unfused") {
      EXPECT_EQ(text.find("fused"), std::string::npos) << text;
    } else if (net.label.rfind("phase_split", 0) == 0) {
      EXPECT_NE(text.find("fused_phase_conv_epilogue"), std::string::npos) << text;
      if (net.label == "phase_split_shifted_k4_3d") {
        EXPECT_NE(text.find("phases shifted (8 combined taps, not 27)"), std::string::npos) << text;
        const std::string no_dx =
            Engine(Network::parse(net.json, net.label), cuda_options("phase_split_no_dx")).describe();
        EXPECT_NE(no_dx.find("phase-split, phases shifted (8 combined taps, not 27): "), std::string::npos) << no_dx;
        EXPECT_NE(no_dx.find("ConvolutionBackwardFilter anvil tensor cores (3xTF32, rule)"), std::string::npos)
            << no_dx;
      }
    } else if (net.label == "relu_avgpool_batch1_channel1") {
      EXPECT_NE(text.find("[fused_conv_epilogue]"), std::string::npos) << text;
      EXPECT_NE(text.find("an average pool"), std::string::npos) << text;
      // Its 2-wide windows leave the last of 5, 7 and 9 conv outputs out.
      EXPECT_NE(text.find("formulation: rule: cuDNN's conv, as the phase split does not apply (not a transposed "
                          "conv), and the direct conv does not (a pool that leaves conv outputs outside its windows)"),
                std::string::npos)
          << text;
      const std::string cudnn = Engine(Network::parse(net.json, net.label), cuda_options("dgrad")).describe();
      EXPECT_NE(cudnn.find("[fused_conv_epilogue]"), std::string::npos) << cudnn;
      EXPECT_NE(cudnn.find("formulation: rule: cuDNN's conv, as the phase split does not apply (turned off), and the "
                           "direct conv does not (turned off)"),
                std::string::npos)
          << cudnn;
    } else if (net.label.rfind("direct_", 0) == 0) {
      EXPECT_NE(text.find("[fused_direct_conv]"), std::string::npos) << text;
      EXPECT_TRUE(std::regex_search(text, std::regex("formulation: rule: anvil's direct conv, as [0-9]+ input "
                                                     "channels x taps per output \\(at most 64\\)")))
          << text;
      if (net.label.find("leaky_chain") != std::string::npos) {
        EXPECT_NE(text.find("saving the chain's codes for backward"), std::string::npos) << text;
      }
      if (net.label == "direct_gray_k4_stem_avg_overlap") {
        EXPECT_NE(text.find("anvil's direct conv (float32 FMA), bias, 1-op chain and an average pool in one kernel, "
                            "saving the chain's codes for backward (a byte an element), not Y"),
                  std::string::npos)
            << text;
      }
    } else if (net.label == "patchify_no_pool_3d") {
      EXPECT_NE(text.find("3-op chain and no pool"), std::string::npos) << text;
    } else if (net.label == "standalone_pools_fan_out") {
      EXPECT_NE(text.find("p [max_pool2d]"), std::string::npos) << text;
      EXPECT_NE(text.find("runs: anvil's pool kernel"), std::string::npos) << text;
      EXPECT_NE(text.find("s+q [fused_add_epilogue]"), std::string::npos) << text;
      EXPECT_NE(text.find("0-op chain and an average pool in one kernel"), std::string::npos) << text;
    } else if (net.label.rfind("residual_add", 0) == 0 || net.label == "add_input_to_itself_scale_avg") {
      EXPECT_NE(text.find("[fused_add_epilogue]"), std::string::npos) << text;
      EXPECT_NE(text.find("formulation: rule: the one formulation, anvil's pool kernel over both addends"),
                std::string::npos)
          << text;
      if (net.label == "residual_add_relu_no_pool_2d") {
        EXPECT_NE(text.find("sum+relu_5 [fused_add_epilogue]"), std::string::npos) << text;
      }
    } else if (net.label == "residual_2d") {
      EXPECT_EQ(text.find("fused_add_epilogue"), std::string::npos) << text;  // an add of three inputs
    }
  }
}

// One forward and one train step of engine against the CPU reference: the
// output, the loss, every parameter gradient and, where the engine computes
// it, the input gradient, within tol (input_grad_tol for the input gradient,
// where given: see GpuParity for why TF32 needs more there). prepare, where
// given, runs on both engines first (parameters and input to load).
void expect_step_matches_cpu(Engine& engine, const Network& net, double tol, double input_grad_tol = 0,
                             const std::function<void(Engine&)>& prepare = {}) {
  Options cpu;
  cpu.device = Device::Cpu;
  cpu.input_grad = engine.options().input_grad;
  Engine reference(net, cpu);
  if (prepare) {
    prepare(engine);
    prepare(reference);
  }
  EXPECT_TRUE(close("output", engine.forward(), reference.forward(), tol));
  const float loss_ref = reference.train_step();
  EXPECT_NEAR(engine.train_step(), loss_ref, tol * loss_ref);
  const auto grads_ref = reference.gradients();
  for (const auto& [pname, grad] : engine.gradients())
    EXPECT_TRUE(close("grad." + pname, grad, grads_ref.at(pname), tol));
  if (cpu.input_grad) {
    EXPECT_TRUE(close("grad.input", engine.input_gradient(), reference.input_gradient(),
                      input_grad_tol > 0 ? input_grad_tol : tol));
  }
}

// Under tf32 a phase split whose tensor-core forward cannot take the chain
// gives way to cuDNN's conv (the phase split stays the alternative autotune
// times); strict fp32 keeps it. The k4 s2 net's 6 channels x 27 aligned taps
// exceed the forward kernel's 128.
TEST(GpuFusion, Tf32TakesCudnnWhereTheTensorCoreForwardDoesNotFit) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const auto nets = small_nets();
  const SmallNet& net =
      *std::find_if(nets.begin(), nets.end(), [](const SmallNet& n) { return n.label == "phase_split_shifted_k4_3d"; });
  std::string tf32_json = net.json;
  const std::string fp32_field = R"("precision": "fp32")";
  ASSERT_NE(tf32_json.find(fp32_field), std::string::npos);
  tf32_json.replace(tf32_json.find(fp32_field), fp32_field.size(), R"("precision": "tf32")");
  const Network tf32 = Network::parse(tf32_json, net.label);
  Engine engine(tf32, cuda_options("phase_split_no_dx"));
  const std::string text = engine.describe();
  EXPECT_NE(text.find("[fused_conv_epilogue]"), std::string::npos) << text;
  EXPECT_NE(text.find("formulation: rule: cuDNN's conv, as under tf32 the phase split pays only where"),
            std::string::npos)
      << text;
  const std::string fp32 = Engine(Network::parse(net.json, net.label), cuda_options("phase_split_no_dx")).describe();
  EXPECT_NE(fp32.find("[fused_phase_conv_epilogue]"), std::string::npos) << fp32;
  expect_step_matches_cpu(engine, tf32, 5e-3);
}

// A conv with more than 16 input channels x taps per output takes cuDNN's
// conv by rule, and so does one whose pool leaves conv outputs outside its
// windows (backward reads Y whole); --autotune times the direct conv against
// cuDNN's, and whichever it keeps matches the CPU reference.
TEST(GpuFusion, DirectConvRuleAndAutotune) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const Network wide = Network::parse(net_json("w", "[2, 8, 10, 12]", R"(
        {"type": "conv2d", "in_channels": 8, "out_channels": 6, "kernel_size": 3, "padding": 1},
        {"type": "relu"}, {"type": "avg_pool2d", "kernel_size": 2})"),
                                      "wide");
  const std::string rule = Engine(wide, cuda_options("phase_split")).describe();
  EXPECT_NE(rule.find("[fused_conv_epilogue]"), std::string::npos) << rule;
  EXPECT_NE(rule.find("72 input channels x taps per output exceed the direct conv's rule of 64"), std::string::npos)
      << rule;
  const Network gaps = Network::parse(net_json("g", "[2, 3, 9, 10]", R"(
        {"type": "conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "relu"}, {"type": "max_pool2d", "kernel_size": 2})"),
                                      "gaps");
  const std::string uncovered = Engine(gaps, cuda_options("phase_split")).describe();
  EXPECT_NE(uncovered.find("the direct conv does not (a pool that leaves conv outputs outside its windows)"),
            std::string::npos)
      << uncovered;

  Options tuned = cuda_options("phase_split");
  tuned.autotune = true;
  tuned.input_grad = true;
  Engine engine(wide, tuned);
  const std::string text = engine.describe();
  const std::regex both(R"(fused_conv_epilogue [0-9]+\.[0-9]{3} ms, fused_direct_conv [0-9]+\.[0-9]{3} ms)");
  EXPECT_TRUE(std::regex_search(text, both)) << text;
  expect_step_matches_cpu(engine, wide, 1e-5);
}

// Under tf32, a stride-1 conv or transposed conv that the phase split and the
// direct conv leave runs anvil's wgmma kernel on sm_90 (conv, chain and pool
// in one) where its rule holds (more than 32 out_channels, two input tiles a
// block); its train step, cuDNN's backward on the Y or argmax it saves,
// matches the CPU reference. --no-wgmma-conv gives cuDNN's conv back. With 32
// out_channels the rule keeps cuDNN's conv, and --autotune times the wgmma
// conv with the rest.
TEST(GpuFusion, Tf32StrideOneConvsRunTheWgmmaKernel) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  if (!cuda::wgmma_conv_available()) GTEST_SKIP() << "needs an sm_90 GPU";
  auto tf32 = [](std::string json) {
    const std::string fp32_field = R"("precision": "fp32")";
    json.replace(json.find(fp32_field), fp32_field.size(), R"("precision": "tf32")");
    return json;
  };
  const std::vector<SmallNet> nets = {
      // 5 x 7 x 9 conv outputs: the 2-wide windows leave the last of each out, so training keeps Y whole.
      {"conv3d_relu_avg_odd", tf32(net_json("v", "[2, 16, 5, 7, 9]", R"(
        {"type": "conv3d", "in_channels": 16, "out_channels": 64, "kernel_size": 3, "padding": 1},
        {"type": "relu"}, {"type": "avg_pool3d", "kernel_size": 2})"))},
      {"stride1_transposed_leaky_scale_max", tf32(net_json("t", "[2, 8, 4, 6, 6]", R"(
        {"type": "conv_transpose3d", "in_channels": 8, "out_channels": 64, "kernel_size": 3, "padding": 1},
        {"type": "leaky_relu", "negative_slope": 0.2}, {"type": "channel_scale"},
        {"type": "leaky_relu", "negative_slope": 0.2}, {"type": "max_pool3d", "kernel_size": 2})"))},
      {"conv2d_sigmoid_no_pool_40_channels", tf32(net_json("s", "[3, 9, 11, 13]", R"(
        {"type": "conv2d", "in_channels": 9, "out_channels": 40, "kernel_size": 3, "padding": 1},
        {"type": "sigmoid"})"))},
      // leaky_relus alone: their codes are saved for backward, not Y (as conv3d_relu_avg_odd's relu).
      {"conv2d_leaky_chain_no_pool_48_channels", tf32(net_json("l", "[2, 8, 9, 7]", R"(
        {"type": "conv2d", "in_channels": 8, "out_channels": 48, "kernel_size": 3, "padding": 1},
        {"type": "leaky_relu", "negative_slope": -0.5}, {"type": "leaky_relu", "negative_slope": 1.5},
        {"type": "relu"})"))},
  };
  for (const SmallNet& net : nets) {
    SCOPED_TRACE(net.label);
    const Network network = Network::parse(net.json, net.label);
    Engine engine(network, cuda_options("phase_split"));
    const std::string text = engine.describe();
    EXPECT_NE(text.find("[fused_wgmma_conv]"), std::string::npos) << text;
    EXPECT_NE(text.find("formulation: rule: anvil's wgmma conv, as under tf32"), std::string::npos) << text;
    EXPECT_NE(text.find("anvil's wgmma conv (TF32 tensor cores), bias, "), std::string::npos) << text;
    const bool codes = net.label == "conv3d_relu_avg_odd" || net.label == "conv2d_leaky_chain_no_pool_48_channels";
    EXPECT_EQ(text.find("saving the chain's codes for backward") != std::string::npos, codes) << text;
    expect_step_matches_cpu(engine, network, 5e-3, kTf32InputGradTol, tf32_exact_values(engine, network.input_shape()));

    Options off = cuda_options("phase_split");
    off.wgmma_conv = false;
    const std::string cudnn = Engine(network, off).describe();
    EXPECT_NE(cudnn.find("[fused_conv_epilogue]"), std::string::npos) << cudnn;
    EXPECT_NE(cudnn.find("nor the wgmma conv (turned off)"), std::string::npos) << cudnn;

    // Inference: a conv without a pool goes to cuDNN, whose runtime-fusion kernel takes the chain
    // (channels-last; measured faster on random_3's layers); a pool keeps the wgmma conv.
    Options forward_only = cuda_options("phase_split");
    forward_only.mode = Mode::Forward;
    forward_only.input_grad = false;
    Engine inference(network, forward_only);
    const std::string inference_text = inference.describe();
    const bool pooled = net.label.find("_no_pool_") == std::string::npos;
    EXPECT_EQ(inference_text.find("[fused_wgmma_conv]") != std::string::npos, pooled) << inference_text;
    EXPECT_EQ(inference_text.find("without a pool in an inference engine under tf32 cuDNN's conv takes the chain") !=
                  std::string::npos,
              !pooled)
        << inference_text;
    Options cpu;
    cpu.device = Device::Cpu;
    cpu.mode = Mode::Forward;
    Engine reference(network, cpu);
    const auto exact = tf32_exact_values(inference, network.input_shape());
    exact(inference);
    exact(reference);
    EXPECT_TRUE(close("inference output", inference.forward(), reference.forward(), 5e-3));
  }

  const Network narrow = Network::parse(tf32(net_json("n", "[2, 16, 5, 7, 9]", R"(
        {"type": "conv3d", "in_channels": 16, "out_channels": 24, "kernel_size": 3, "padding": 1},
        {"type": "relu"}, {"type": "avg_pool3d", "kernel_size": 2})")),
                                        "narrow");
  const std::string rule = Engine(narrow, cuda_options("phase_split")).describe();
  EXPECT_NE(rule.find("[fused_conv_epilogue]"), std::string::npos) << rule;
  EXPECT_NE(rule.find("the wgmma conv applies, but its rule wants a stride of 1, more than 32 out_channels"),
            std::string::npos)
      << rule;
  Options tuned = cuda_options("phase_split");
  tuned.autotune = true;
  Engine engine(narrow, tuned);
  const std::string text = engine.describe();
  EXPECT_TRUE(std::regex_search(text, std::regex(R"(fused_wgmma_conv [0-9]+\.[0-9]{3} ms)"))) << text;
  EXPECT_TRUE(std::regex_search(text, std::regex(R"(fused_conv_epilogue [0-9]+\.[0-9]{3} ms)"))) << text;
  // --autotune may keep the wgmma conv, which truncates x to TF32: values exact in TF32, as above.
  expect_step_matches_cpu(engine, narrow, 5e-3, kTf32InputGradTol, tf32_exact_values(engine, narrow.input_shape()));

  // A strided conv: the wgmma conv applies (64 channels, two tiles a block), its rule does not; --autotune times it.
  const Network strided = Network::parse(tf32(net_json("s", "[2, 16, 13, 15]", R"(
        {"type": "conv2d", "in_channels": 16, "out_channels": 64, "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "relu"}, {"type": "avg_pool2d", "kernel_size": 2})")),
                                         "strided");
  const std::string strided_rule = Engine(strided, cuda_options("phase_split")).describe();
  EXPECT_NE(strided_rule.find("[fused_conv_epilogue]"), std::string::npos) << strided_rule;
  EXPECT_NE(strided_rule.find("the wgmma conv applies, but its rule wants a stride of 1"), std::string::npos)
      << strided_rule;
  Engine strided_tuned(strided, tuned);
  const std::string strided_text = strided_tuned.describe();
  EXPECT_TRUE(std::regex_search(strided_text, std::regex(R"(fused_wgmma_conv [0-9]+\.[0-9]{3} ms)"))) << strided_text;
  expect_step_matches_cpu(strided_tuned, strided, 5e-3, kTf32InputGradTol,
                          tf32_exact_values(strided_tuned, strided.input_shape()));
}

// --autotune times both formulations of a phase-split chain and keeps the
// faster; whichever it keeps, the results match the CPU reference.
TEST(GpuFusion, AutotuneTimesEachFormulationAndKeepsOne) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const SmallNet net = small_nets()[0];  // batch1_channel1_k2: phase split applies
  const Network network = Network::parse(net.json, net.label);
  Options tuned = cuda_options("phase_split");
  tuned.autotune = true;
  Engine engine(network, tuned);
  const std::string text = engine.describe();
  EXPECT_NE(text.find("formulation: autotuned"), std::string::npos) << text;
  // Both were timed (any time: this runs under compute-sanitizer too).
  EXPECT_TRUE(std::regex_search(text, std::regex(R"(fused_phase_conv_epilogue [0-9]+\.[0-9]{3} ms)"))) << text;
  EXPECT_TRUE(std::regex_search(text, std::regex(R"( fused_conv_epilogue [0-9]+\.[0-9]{3} ms)"))) << text;
  expect_step_matches_cpu(engine, network, 1e-5);
}

std::string with_tf32(std::string json) {
  const std::string fp32_field = R"("precision": "fp32")";
  const size_t at = json.find(fp32_field);
  if (at != std::string::npos) json.replace(at, fp32_field.size(), R"("precision": "tf32")");
  return json;
}

size_t count_matches(const std::string& text, const std::regex& pattern) {
  return static_cast<size_t>(
      std::distance(std::sregex_iterator(text.begin(), text.end(), pattern), std::sregex_iterator()));
}

// Under tf32, where only the epilogue reads the conv's Y (a forward-only
// engine, or a max pool that tiles Y) and the conv sums at least 128
// products per output, cuDNN writes Y channels-last and the epilogue reads
// it so; where backward reads Y, or the conv is thinner, Y stays packed. Odd
// batches and spatial sizes, channels that leave partial 32-channel tiles;
// every formulation matches the CPU reference.
TEST(GpuFusion, Tf32EpilogueReadsAChannelsLastY) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  struct Case {
    std::string label, json;
    bool channels_last_in_training;
  };
  const std::vector<Case> cases = {
      {"conv_tiled_max_2d", net_json("a", "[3, 16, 10, 14]", R"(
        {"type": "conv2d", "in_channels": 16, "out_channels": 40, "kernel_size": 3, "padding": 1},
        {"type": "leaky_relu", "negative_slope": 0.2}, {"type": "channel_scale"},
        {"type": "leaky_relu", "negative_slope": 0.2}, {"type": "max_pool2d", "kernel_size": 2})"),
       true},
      {"conv_transpose_k4s2_tiled_max_2d", net_json("b", "[3, 20, 5, 7]", R"(
        {"type": "conv_transpose2d", "in_channels": 20, "out_channels": 36, "kernel_size": 4, "stride": 2,
         "padding": 1},
        {"type": "relu"}, {"type": "max_pool2d", "kernel_size": 2})"),
       true},
      {"conv_avg_3d", net_json("c", "[1, 8, 5, 6, 7]", R"(
        {"type": "conv3d", "in_channels": 8, "out_channels": 44, "kernel_size": 3, "padding": 1},
        {"type": "relu"}, {"type": "avg_pool3d", "kernel_size": 2})"),
       false},
      {"conv_overlapping_max_no_bias_2d", net_json("d", "[2, 16, 9, 11]", R"(
        {"type": "conv2d", "in_channels": 16, "out_channels": 24, "kernel_size": 3, "bias": false},
        {"type": "sigmoid"}, {"type": "channel_scale"},
        {"type": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1})"),
       false},
      {"conv_no_pool_2d", net_json("e", "[2, 16, 7, 9]", R"(
        {"type": "conv2d", "in_channels": 16, "out_channels": 32, "kernel_size": 3, "padding": 1},
        {"type": "tanh"})"),
       false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    const Network network = Network::parse(with_tf32(c.json), c.label);
    Options cpu;
    cpu.device = Device::Cpu;
    const HostTensor want = Engine(network, cpu).forward();
    Options forward_only = cuda_options("dgrad");
    forward_only.mode = Mode::Forward;
    forward_only.input_grad = false;  // a forward-only engine refuses it
    Engine inference(network, forward_only);
    const std::string text = inference.describe();
    EXPECT_NE(text.find("Y channels-last"), std::string::npos) << text;
    EXPECT_NE(text.find("one epilogue kernel (reading Y channels-last)"), std::string::npos) << text;
    EXPECT_TRUE(close("output", inference.forward(), want, 5e-3));
    Options train = cuda_options("dgrad");
    train.input_grad = false;  // under TF32 the input gradient's error is the backward conv's, not this path's
    Engine training(network, train);
    const std::string trained = training.describe();
    EXPECT_EQ(trained.find("Y channels-last") != std::string::npos, c.channels_last_in_training) << trained;
    expect_step_matches_cpu(training, network, 5e-3);
  }
  // Strict fp32 keeps Y packed, and so does a conv of 12 x 9 products per output.
  const std::string fp32 = Engine(Network::parse(cases[0].json, "fp32"), cuda_options("dgrad")).describe();
  EXPECT_EQ(fp32.find("channels-last"), std::string::npos) << fp32;
  Options forward_only = cuda_options("dgrad");
  forward_only.mode = Mode::Forward;
  forward_only.input_grad = false;
  const std::string thin = Engine(Network::parse(with_tf32(net_json("t", "[2, 12, 9, 11]", R"(
        {"type": "conv2d", "in_channels": 12, "out_channels": 40, "kernel_size": 3},
        {"type": "relu"}, {"type": "avg_pool2d", "kernel_size": 2})")),
                                                 "thin"),
                                  forward_only)
                               .describe();
  EXPECT_NE(thin.find("[fused_conv_epilogue]"), std::string::npos) << thin;
  EXPECT_EQ(thin.find("channels-last"), std::string::npos) << thin;
}

// Inference under tf32 keeps the activations between fused convs
// channels-last (lower/channels_last.cpp): cuDNN's graph computes a conv, its
// bias and its chain in one kernel and writes them so, the next conv reads
// them so, and a residual add reads both addends so. Odd batches, spatial
// sizes and channels (5: not a multiple of 4), 2-D and 3-D, sigmoid, tanh,
// multipliers, a conv without bias; the network's output stays packed. Where
// cuDNN's graph cannot take a layer, it copies between layouts: a transposed
// conv of stride and dilation 2, whose backward-data runs cuDNN's FMA
// algorithms (its channels-last input copied to packed). A pyramid join
// passes a pool's output (copied to channels-last), a conv that nothing
// follows (fused alone, its epilogue the bias), a three-input add and the
// pool after it channels-last, which writes channels-last for a conv after
// it. Epilogue kernels that read Y channels-last write it so too where a
// conv reads their output: after a pool, a transposed conv and a pooled
// residual join (and a chain cuDNN's graph cannot take, where cuDNN gives
// the channels-last Y). A chain of lone convs (an RGB one, one
// without bias) runs on cuDNN's formulation even with anvil's kernels
// allowed. Each matches the CPU reference and the same engine with
// every activation packed. Training, strict fp32 and
// Options::channels_last = false keep every activation packed, and a lone
// conv that passes nothing channels-last stays a plain conv.
TEST(GpuFusion, Tf32InferenceKeepsActivationsChannelsLast) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  struct Case {
    std::string label, json;
    std::vector<std::string> described;  // in the channels-last engine's description
    bool every_formulation = false;      // else cuDNN's conv alone ("dgrad")
  };
  const std::string fused = "in cuDNN's kernel, the output channels-last";
  const std::vector<Case> cases = {
      {"residual_2d",
       net_json("r", "[3, 12, 9, 11]", R"(
        {"type": "conv2d", "name": "stem", "in_channels": 12, "out_channels": 16, "kernel_size": 3, "padding": 1},
        {"type": "relu", "name": "act"},
        {"type": "conv2d", "name": "branch", "in_channels": 16, "out_channels": 16, "kernel_size": 3, "padding": 1},
        {"type": "channel_scale", "name": "gain"},
        {"type": "add", "name": "sum", "inputs": ["act", "gain"]},
        {"type": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1})"),
       {fused, "its packed input copied to channels-last first", "x channels-last",
        "reading both addends channels-last"}},
      {"chain_3d",
       net_json("c", "[2, 8, 5, 6, 7]", R"(
        {"type": "conv3d", "in_channels": 8, "out_channels": 12, "kernel_size": 3, "padding": 1},
        {"type": "leaky_relu", "negative_slope": 0.3}, {"type": "channel_scale"},
        {"type": "conv3d", "in_channels": 12, "out_channels": 8, "kernel_size": 2, "bias": false},
        {"type": "tanh"},
        {"type": "conv3d", "in_channels": 8, "out_channels": 12, "kernel_size": 1},
        {"type": "leaky_relu", "negative_slope": 1.5}, {"type": "leaky_relu", "negative_slope": -0.3},
        {"type": "conv3d", "in_channels": 12, "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "sigmoid"}, {"type": "max_pool3d", "kernel_size": 2})"),
       {fused, "x channels-last"}},
      {"transposed_reader_2d",
       net_json("t", "[2, 4, 7, 6]", R"(
        {"type": "conv2d", "in_channels": 4, "out_channels": 8, "kernel_size": 3, "padding": 1},
        {"type": "relu"},
        {"type": "conv_transpose2d", "in_channels": 8, "out_channels": 6, "kernel_size": 3, "stride": 2,
         "dilation": 2},
        {"type": "sigmoid"}, {"type": "avg_pool2d", "kernel_size": 2})"),
       {fused, "its channels-last input copied to packed first"}},
      {"odd_channels_2d",
       net_json("o", "[1, 3, 13, 7]", R"(
        {"type": "conv2d", "in_channels": 3, "out_channels": 5, "kernel_size": 3, "padding": 1},
        {"type": "relu"},
        {"type": "conv2d", "in_channels": 5, "out_channels": 7, "kernel_size": 3, "padding": 1},
        {"type": "relu"}, {"type": "avg_pool2d", "kernel_size": 2})"),
       {}},
      {"pyramid_2d",
       net_json("p", "[3, 8, 13, 10]", R"(
        {"type": "avg_pool2d", "name": "down", "kernel_size": 2},
        {"type": "conv2d", "name": "conv1", "in_channels": 8, "out_channels": 8, "kernel_size": 3, "padding": 1},
        {"type": "leaky_relu", "name": "act1", "negative_slope": 0.1},
        {"type": "conv2d", "name": "conv2", "in_channels": 8, "out_channels": 8, "kernel_size": 3, "padding": 1},
        {"type": "add", "name": "join", "inputs": ["down", "act1", "conv2"]},
        {"type": "relu"}, {"type": "avg_pool2d", "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "conv2d", "in_channels": 8, "out_channels": 5, "kernel_size": 1})"),
       {fused, "its output copied to channels-last after", "channels-last in and out",
        "reading its input channels-last, writing its output channels-last"}},
      {"pooled_blocks_2d",
       net_json("v", "[3, 16, 13, 10]", R"(
        {"type": "conv2d", "in_channels": 16, "out_channels": 12, "kernel_size": 3, "padding": 1},
        {"type": "relu"}, {"type": "max_pool2d", "kernel_size": 2},
        {"type": "conv_transpose2d", "in_channels": 12, "out_channels": 8, "kernel_size": 2, "stride": 2},
        {"type": "leaky_relu", "negative_slope": 0.2},
        {"type": "conv2d", "in_channels": 8, "out_channels": 8, "kernel_size": 3, "padding": 1},
        {"type": "tanh"}, {"type": "avg_pool2d", "kernel_size": 2},
        {"type": "conv2d", "in_channels": 8, "out_channels": 4, "kernel_size": 1})"),
       {"(reading Y and writing its output channels-last)", "x channels-last"}},
      {"residual_head_2d",
       net_json("h", "[2, 12, 9, 11]", R"(
        {"type": "conv2d", "name": "stem", "in_channels": 12, "out_channels": 16, "kernel_size": 3, "padding": 1},
        {"type": "relu", "name": "act"},
        {"type": "conv2d", "name": "branch", "in_channels": 16, "out_channels": 16, "kernel_size": 3, "padding": 1},
        {"type": "add", "name": "sum", "inputs": ["act", "branch"]},
        {"type": "max_pool2d", "kernel_size": 2},
        {"type": "conv2d", "in_channels": 16, "out_channels": 6, "kernel_size": 1})"),
       {fused, "reading both addends and writing its output channels-last"}},
      {"lone_convs_2d",
       net_json("l", "[2, 3, 11, 9]", R"(
        {"type": "conv2d", "name": "rgb", "in_channels": 3, "out_channels": 40, "kernel_size": 3, "padding": 1},
        {"type": "conv2d", "name": "wide", "in_channels": 40, "out_channels": 64, "kernel_size": 3, "padding": 1},
        {"type": "conv2d", "name": "plain", "in_channels": 64, "out_channels": 8, "kernel_size": 3, "bias": false},
        {"type": "conv2d", "name": "last", "in_channels": 8, "out_channels": 5, "kernel_size": 3, "padding": 1})"),
       {fused, "x channels-last"},
       true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    Options forward_only = cuda_options(c.every_formulation ? "phase_split" : "dgrad");
    forward_only.mode = Mode::Forward;
    forward_only.input_grad = false;  // a forward-only engine refuses it
    Options packed = forward_only;
    packed.channels_last = false;
    const Network network = Network::parse(with_tf32(c.json), c.label);
    Options cpu;
    cpu.device = Device::Cpu;
    Engine reference(network, cpu);
    const std::function<void(Engine&)> load = tf32_exact_values(reference, network.input_shape());
    load(reference);
    const HostTensor want = reference.forward();
    Engine last(network, forward_only), all_packed(network, packed);
    const std::string text = last.describe(), packed_text = all_packed.describe();
    for (const std::string& part : c.described) EXPECT_NE(text.find(part), std::string::npos) << part << "\n" << text;
    EXPECT_EQ(packed_text.find("x channels-last"), std::string::npos) << packed_text;
    EXPECT_EQ(packed_text.find("output channels-last"), std::string::npos) << packed_text;
    EXPECT_EQ(packed_text.find("channels-last in and out"), std::string::npos) << packed_text;
    for (const auto& [label, e] : {std::pair{"channels-last", &last}, std::pair{"packed", &all_packed}}) {
      load(*e);
      EXPECT_TRUE(close(label, e->forward(), want, 5e-3)) << e->describe();
    }
  }
  // Training and strict fp32 keep every activation packed.
  Options forward_only = cuda_options("dgrad");
  forward_only.mode = Mode::Forward;
  forward_only.input_grad = false;
  const Network residual = Network::parse(with_tf32(cases[0].json), "train");
  Options train = cuda_options("dgrad");
  train.input_grad = false;
  const std::string trained = Engine(residual, train).describe();
  EXPECT_EQ(trained.find(fused), std::string::npos) << trained;
  EXPECT_EQ(trained.find("addends channels-last"), std::string::npos) << trained;
  const std::string fp32 = Engine(Network::parse(cases[0].json, "fp32"), forward_only).describe();
  EXPECT_EQ(fp32.find("channels-last"), std::string::npos) << fp32;
  const std::string lone = Engine(Network::parse(with_tf32(net_json("p", "[2, 8, 9, 11]", R"(
        {"type": "conv2d", "name": "alone", "in_channels": 8, "out_channels": 16, "kernel_size": 3})")),
                                                 "lone"),
                                  forward_only)
                               .describe();
  EXPECT_NE(lone.find("alone [conv2d]"), std::string::npos) << lone;
}

// The rule under tf32: a 3-D conv's ops that sum at least 128 products per
// output run the graph API's first tensor-core engine, the others the legacy
// API (a filter gradient of at most 32 rows runs anvil's kernel); all match
// the CPU.
TEST(GpuConv, RuleRunsWide3dConvsOnTensorCoreEngines) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const std::string json = net_json("r", "[2, 8, 5, 7, 6]", R"(
        {"type": "conv3d", "in_channels": 8, "out_channels": 40, "kernel_size": 3, "padding": 1},
        {"type": "relu"},
        {"type": "conv3d", "in_channels": 40, "out_channels": 3, "kernel_size": 1})");
  const Network network = Network::parse(with_tf32(json), "wide_and_thin_3d");
  Engine engine(network, cuda_options("unfused"));
  const std::string text = engine.describe();
  const std::string first_tc =
      R"( graph engine [0-9]+ \(tensor ops, ws [0-9]+ KiB, the heuristics' first tensor-core engine\))";
  // 8 x 27, 40 x 27 and 8 x 27 products (W's 40 rows): the first conv's forward, input gradient
  // and filter gradient.
  EXPECT_EQ(count_matches(text, std::regex("ConvolutionForward" + first_tc)), 1u) << text;
  EXPECT_EQ(count_matches(text, std::regex("ConvolutionBackwardData" + first_tc)), 1u) << text;
  EXPECT_EQ(count_matches(text, std::regex("ConvolutionBackwardFilter" + first_tc)), 1u) << text;
  // 40 x 1 and 3 x 1: the second conv's forward and input gradient stay on the legacy API; its
  // filter gradient (W's 3 rows) runs anvil's kernel.
  EXPECT_EQ(count_matches(text, std::regex("ConvolutionForward algo [0-9]+")), 1u) << text;
  EXPECT_EQ(count_matches(text, std::regex("ConvolutionBackwardData algo [0-9]+")), 1u) << text;
  EXPECT_EQ(count_matches(text, std::regex("ConvolutionBackwardFilter anvil tensor cores \\(TF32, rule\\)")), 1u)
      << text;
  expect_step_matches_cpu(engine, network, 5e-3);
  // Under fp32 no cuDNN op runs on the tensor cores: both forwards take the strict fp32 rule's FMA
  // config (StrictFp32ForwardRelationRunsTheGraphApisFirstConfig), both input gradients the legacy
  // API (Find may label its pick under an FMA descriptor either way).
  const std::string fp32 = Engine(Network::parse(json, "fp32_3d"), cuda_options("unfused")).describe();
  EXPECT_EQ(fp32.find("tensor ops"), std::string::npos) << fp32;
  EXPECT_EQ(count_matches(fp32, std::regex("graph engine")), 2u) << fp32;
  EXPECT_EQ(count_matches(fp32, std::regex(R"(ConvolutionForward graph engine [0-9]+ config B[0-9]+ \(fma, )")), 2u)
      << fp32;
  EXPECT_EQ(count_matches(fp32, std::regex(R"(ConvolutionBackwardData algo [0-9]+ \((fma|default math), )")), 2u)
      << fp32;
  // Under tf32 a 2-D conv as wide runs the legacy API.
  const std::string wide_2d = with_tf32(net_json("w", "[2, 8, 9, 11]", R"(
        {"type": "conv2d", "in_channels": 8, "out_channels": 8, "kernel_size": 5, "padding": 2})"));
  const std::string text_2d = Engine(Network::parse(wide_2d, "wide_2d"), cuda_options("unfused")).describe();
  EXPECT_EQ(text_2d.find("graph engine"), std::string::npos) << text_2d;
  // --autotune times each config the heuristics list (one engine may be listed with several knob
  // settings) and names the one it keeps; each of the two convs' three ops runs the fastest graph
  // config or, where that was faster, anvil's tensor-core kernel (which wins depends on the timings:
  // under compute-sanitizer anvil's won the forward and filter-gradient ops).
  Options tuned = cuda_options("unfused");
  tuned.autotune = true;
  Engine autotuned(network, tuned);
  const std::string tuned_text = autotuned.describe();
  const std::string config_text =
      R"(graph engine [0-9]+ config [AF][0-9]+ \((tensor ops|fma), ws [0-9]+ KiB, fastest of [0-9]+ configs\))";
  const std::regex config(config_text);
  const std::regex anvil_won(R"(anvil tensor cores \(TF32, autotuned: anvil [0-9.]+ ms, cuDNN [0-9.]+ ms\))");
  // Backward data has no anvil kernel: both convs' run a graph config.
  EXPECT_EQ(count_matches(tuned_text, std::regex("ConvolutionBackwardData " + config_text)), 2u) << tuned_text;
  EXPECT_EQ(count_matches(tuned_text, config) + count_matches(tuned_text, anvil_won), 6u) << tuned_text;
  expect_step_matches_cpu(autotuned, network, 5e-3);
}

// Under deterministic strict fp32 (not --autotune) the forward relation runs
// the first eligible config of the graph API's heuristics: mode B for a 3-D
// conv, mode A for a 2-D one. Here that
// is a conv's forward and two transposed convs' input gradients, the second
// added into the first's (a fan-out: the beta=1 plan). The step matches the
// CPU, in 2-D and in 3-D.
TEST(GpuConv, StrictFp32ForwardRelationRunsTheGraphApisFirstConfig) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  for (const int dims : {2, 3}) {
    const std::string d = std::to_string(dims);
    const std::string input = dims == 3 ? "[2, 3, 5, 4, 3]" : "[3, 3, 7, 5]";
    const Network network = Network::parse(net_json("f" + d, input, R"(
        {"type": "conv)" + d + R"(d", "name": "c", "in_channels": 3, "out_channels": 6, "kernel_size": 3, "padding": 1},
        {"type": "relu", "name": "r"},
        {"type": "conv_transpose)" + d + R"(d", "name": "t1", "in_channels": 6, "out_channels": 4, "kernel_size": 2,
         "stride": 2, "inputs": ["r"]},
        {"type": "conv_transpose)" + d + R"(d", "name": "t2", "in_channels": 6, "out_channels": 4, "kernel_size": 3,
         "stride": 2, "padding": 1, "output_padding": 1, "inputs": ["r"]},
        {"type": "add", "inputs": ["t1", "t2"]})"),
                                           "fp32_forward_rule_" + d + "d");
    Engine engine(network, cuda_options("unfused"));
    const std::string text = engine.describe();
    const std::string mode = dims == 3 ? "B" : "A";
    const std::regex first("ConvolutionForward graph engine [0-9]+ config " + mode +
                           R"([0-9]+ \(fma, ws [0-9]+ KiB, the first eligible config of heuristics mode )" + mode +
                           R"(\))");
    EXPECT_EQ(count_matches(text, first), 3u) << text;
    EXPECT_EQ(count_matches(text, std::regex("graph engine")), 3u) << text;
    expect_step_matches_cpu(engine, network, 1e-4);
    // --nondeterministic keeps the legacy API's fastest measured algorithm.
    Options any_algorithm = cuda_options("unfused");
    any_algorithm.deterministic = false;
    const std::string legacy = Engine(network, any_algorithm).describe();
    EXPECT_EQ(legacy.find("graph engine"), std::string::npos) << legacy;
  }
}

// cuDNN 9.14's tensor-core backward-data engines hang on a stride and a
// dilation above 1 (a timeout here): under tf32 those ops run cuDNN's FMA
// algorithms, by rule and autotuned, and say why; the step matches the CPU.
TEST(GpuConv, StridedDilatedBackwardDataRunsFmaUnderTf32) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  // The transposed conv's forward and the conv's input gradient are cuDNN's backward data.
  const Network network = Network::parse(with_tf32(net_json("sd", "[2, 5, 5, 1, 3]", R"(
        {"type": "conv_transpose3d", "in_channels": 5, "out_channels": 2, "kernel_size": [2, 4, 2],
         "stride": [2, 3, 3], "padding": [0, 0, 1], "output_padding": [0, 1, 1], "dilation": [2, 1, 1]},
        {"type": "relu"},
        {"type": "conv3d", "in_channels": 2, "out_channels": 3, "kernel_size": 2, "stride": 2, "dilation": 2})")),
                                         "strided_dilated");
  // The math is Find's answer under an FMA-math descriptor: never tensor ops.
  const std::regex fma(
      R"(ConvolutionBackwardData [^;\n]*\((fma|default math), [^;\n]*\) \(no tensor cores: cuDNN's tensor-core engines hang)");
  for (const bool autotune : {false, true}) {
    Options options = cuda_options("unfused");
    options.autotune = autotune;
    Engine engine(network, options);
    const std::string text = engine.describe();
    EXPECT_EQ(count_matches(text, fma), 2u) << text;
    expect_step_matches_cpu(engine, network, 5e-3);
  }
}

// Under deterministic strict fp32 a strided backward-data relation (a
// transposed conv's forward, a strided conv's input gradient) runs as the
// phase split: one stride-1 forward conv over s^d x the output's channels,
// then the phases interleaved (cuDNN's deterministic FMA backward data
// measured 5x slower, docs/performance.md). Not under tf32, --no-phase-split
// or --nondeterministic; --autotune times both. Each matches the CPU.
TEST(GpuConv, StrictFp32RunsStridedBackwardDataPhaseSplit) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const auto nets = small_nets();
  const auto it = std::find_if(nets.begin(), nets.end(),
                               [](const SmallNet& n) { return n.label == "strided_dgrad_fan_out_ragged_2d"; });
  ASSERT_NE(it, nets.end());
  const Network network = Network::parse(it->json, it->label);
  const std::string split = "ConvolutionBackwardData phase-split (4 phases, one stride-1 ConvolutionForward";
  // up's forward and down's input gradient.
  const std::regex by_rule(
      R"(ConvolutionBackwardData phase-split \(4 phases, one stride-1 ConvolutionForward [^;\n]*, rule\))");
  Engine engine(network, cuda_options("phase_split"));
  const std::string text = engine.describe();
  EXPECT_EQ(count_matches(text, by_rule), 2u) << text;
  expect_step_matches_cpu(engine, network, 1e-5);

  Options off = cuda_options("phase_split");
  off.phase_split = false;
  const std::string off_text = Engine(network, off).describe();
  EXPECT_EQ(off_text.find(split), std::string::npos) << off_text;
  Options nondeterministic = cuda_options("phase_split");
  nondeterministic.deterministic = false;
  const std::string nondeterministic_text = Engine(network, nondeterministic).describe();
  EXPECT_EQ(nondeterministic_text.find(split), std::string::npos) << nondeterministic_text;
  const std::string tf32_text =
      Engine(Network::parse(with_tf32(it->json), "tf32"), cuda_options("phase_split")).describe();
  EXPECT_EQ(tf32_text.find(split), std::string::npos) << tf32_text;

  Options tuned = cuda_options("phase_split");
  tuned.autotune = true;
  Engine autotuned(network, tuned);
  const std::string tuned_text = autotuned.describe();
  EXPECT_EQ(
      count_matches(tuned_text, std::regex(R"(autotuned: phase split [0-9]+\.[0-9]{3} ms, cuDNN [0-9]+\.[0-9]{3} ms)")),
      2u)
      << tuned_text;
  expect_step_matches_cpu(autotuned, network, 1e-5);
}

// Under tf32 --autotune times anvil's TF32 forward-relation kernel against
// cuDNN's for each conv op that computes that relation (a conv's forward, a
// transposed conv's input gradient); whichever it keeps, the step matches the CPU.
TEST(GpuConv, AutotuneTimesAnvilsForwardKernel) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const std::string json = net_json("f", "[2, 5, 11, 13]", R"(
        {"type": "conv2d", "in_channels": 5, "out_channels": 7, "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "relu"},
        {"type": "conv_transpose2d", "in_channels": 7, "out_channels": 3, "kernel_size": 3, "stride": 2})");
  const Network network = Network::parse(with_tf32(json), "forward_relations");
  Options tuned = cuda_options("unfused");
  tuned.autotune = true;
  Engine engine(network, tuned);
  const std::string text = engine.describe();
  const std::regex timed(R"(ConvolutionForward[^;\n]*autotuned: anvil [0-9]+\.[0-9]{3} ms, cuDNN [0-9]+\.[0-9]{3} ms)");
  EXPECT_EQ(count_matches(text, timed), 2u) << text;
  expect_step_matches_cpu(engine, network, 5e-3);
}

// --autotune times anvil's pool kernels against cuDNN's pooling; either way
// the gradients match the CPU reference.
TEST(GpuFusion, AutotuneTimesBothPoolKernels) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const auto nets = small_nets();
  const auto it =
      std::find_if(nets.begin(), nets.end(), [](const SmallNet& n) { return n.label == "standalone_pools_fan_out"; });
  ASSERT_NE(it, nets.end());
  const Network network = Network::parse(it->json, it->label);
  Options tuned = cuda_options("phase_split");
  tuned.autotune = true;
  tuned.input_grad = true;
  Engine engine(network, tuned);
  const std::string text = engine.describe();
  // Any time: under compute-sanitizer each takes milliseconds.
  EXPECT_EQ(count_matches(
                text, std::regex(R"(anvil's pool kernel [0-9]+\.[0-9]{3} ms, cuDNN's pooling [0-9]+\.[0-9]{3} ms)")),
            1u)
      << text;
  Options cpu;
  cpu.device = Device::Cpu;
  cpu.input_grad = true;
  Engine reference(network, cpu);
  const float loss = engine.train_step();
  EXPECT_NEAR(loss, reference.train_step(), 1e-5 * loss);
  EXPECT_TRUE(close("grad.input", engine.input_gradient(), reference.input_gradient(), 1e-5));
}

// Inference engines save nothing for backward; their output is the training engine's, bit for bit.
TEST(GpuInference, ForwardOnlyEngineMatchesTrainingEngineBitwise) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const Network net = Network::load(data_path("odd_sizes.json"));
  Options forward_only = cuda_options();
  forward_only.mode = Mode::Forward;
  Engine inference(net, forward_only), training(net, cuda_options());
  EXPECT_LT(inference.device_bytes(), training.device_bytes());
  EXPECT_TRUE(bitwise_equal(inference.forward(), training.forward()));
}

// ---- determinism and execution ----

std::map<std::string, HostTensor> train_three_steps(const Network& net, const Options& options,
                                                    std::vector<float>* losses) {
  Engine engine(net, options);
  for (int i = 0; i < 3; ++i) losses->push_back(engine.train_step());
  return engine.parameters();
}

TEST(GpuDeterminism, RerunAndGraphReplayAreBitwiseIdentical) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const Network net = Network::load(data_path("kb74_small.json"));
  Options eager = cuda_options();
  eager.cuda_graph = false;
  std::vector<float> la, lb, lc;
  const auto a = train_three_steps(net, cuda_options(), &la);
  const auto b = train_three_steps(net, cuda_options(), &lb);
  const auto c = train_three_steps(net, eager, &lc);
  EXPECT_EQ(la, lb);
  EXPECT_EQ(la, lc);
  for (const auto& [name, value] : a) {
    EXPECT_TRUE(bitwise_equal(value, b.at(name))) << "rerun differs: " << name;
    EXPECT_TRUE(bitwise_equal(value, c.at(name))) << "graph replay differs from eager: " << name;
  }
}

// The captured forward+backward (what `anvil bench --mode fwdbwd` replays) leaves the
// parameters alone and yields the gradients the train step then computes, bit for bit.
TEST(GpuExecution, CapturedGradientsMatchTheTrainStep) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  Engine engine(Network::load(data_path("odd_sizes.json")), cuda_options());
  const auto before = engine.parameters();
  for (int i = 0; i < 3; ++i) engine.enqueue_gradients();  // captured after the first
  const auto grads = engine.gradients();
  for (const auto& [name, value] : engine.parameters()) EXPECT_TRUE(bitwise_equal(value, before.at(name))) << name;
  engine.train_step();
  for (const auto& [name, value] : engine.gradients()) EXPECT_TRUE(bitwise_equal(value, grads.at(name))) << name;
}

TEST(GpuExecution, TrainStepAllocatesAndSynchronisesNothing) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  Engine engine(Network::load(data_path("kb74_small.json")), cuda_options());
  const auto before = engine.device_counters();
  EXPECT_EQ(before.allocations, 1) << "the arena is the only allocation";
  for (int i = 0; i < 4; ++i) engine.enqueue_train_step();
  const auto after = engine.device_counters();
  EXPECT_EQ(after.allocations, before.allocations);
  EXPECT_EQ(after.frees, before.frees);
  EXPECT_EQ(after.synchronizations, before.synchronizations);
  EXPECT_TRUE(engine.replaying_cuda_graph());
  engine.synchronize();
}

}  // namespace
}  // namespace anvil::testing
