#include "layers/layer.hpp"

#include <algorithm>

#include "anvil/error.hpp"
#include "engine/src/cuda/nvtx.hpp"

namespace anvil {

Layer::Layer(std::string type, std::string name, std::string path)
    : type_(std::move(type)), name_(std::move(name)), path_(std::move(path)) {}

void Layer::fail(const std::string& key, const std::string& message) const {
  throw InputError(path_ + (key.empty() ? "" : "." + key) + ": " + message);
}

void Layer::require_spatial_input(const Shape& x, int dims) const {
  if (static_cast<int>(x.size()) != dims + 2)
    fail("", "'" + type_ + "' needs a " + std::to_string(dims + 2) + "-d input (N, C, " + (dims == 3 ? "D, " : "") +
                 "H, W), got " + to_string(x));
}

const Shape& Layer::setup(const std::vector<Shape>& inputs) {
  const int want = num_inputs();
  const int got = static_cast<int>(inputs.size());
  if (want >= 0 && got != want)
    fail("inputs", "'" + type_ + "' takes " + std::to_string(want) + " input(s), got " + std::to_string(got));
  if (want < 0 && got < 2) fail("inputs", "'" + type_ + "' takes two or more inputs, got " + std::to_string(got));
  input_shapes_ = inputs;
  output_shape_ = infer_shape(inputs);
  param_count_ = param_specs().size();  // once: the checks on every call must not rebuild the list
  forward_range_ = "forward " + name_;
  backward_range_ = "backward " + name_;
  return output_shape_;
}

// Internal consistency: the executor must hand a layer exactly what setup() sized.
void Layer::check_args(const LayerArgs& args, bool backward) const {
  auto fail_internal = [&](const std::string& what) {
    throw Error("internal error: layer '" + name_ + "' " + (backward ? "backward" : "forward") + ": " + what);
  };
  if (args.in.size() != input_shapes_.size()) fail_internal("wrong input count");
  for (size_t i = 0; i < args.in.size(); ++i)
    if (args.in[i].shape != input_shapes_[i])
      fail_internal("input " + std::to_string(i) + " has shape " + to_string(args.in[i].shape) + ", expected " +
                    to_string(input_shapes_[i]));
  if (args.out.shape != output_shape_) fail_internal("output shape " + to_string(args.out.shape));
  if (args.params.size() != param_count_) fail_internal("wrong parameter count");
  if (!backward) return;
  if (args.dout.shape != output_shape_ || !args.dout.data) fail_internal("missing output gradient");
  if (args.din.size() != input_shapes_.size() || args.din_accumulate.size() != input_shapes_.size())
    fail_internal("wrong input-gradient count");
  if (args.dparams.size() != args.params.size()) fail_internal("wrong parameter-gradient count");
}

#if ANVIL_WITH_CUDA
bool Layer::elementwise_layouts(const std::vector<bool>& inputs, bool output) {
  return std::all_of(inputs.begin(), inputs.end(), [&](bool channels_last) { return channels_last == output; });
}

bool Layer::takes_layouts(const std::vector<bool>& inputs, bool output) const {
  return elementwise_layouts(inputs, false) && !output;
}

void Layer::set_channels_last(const std::vector<bool>& inputs, bool output) {
  if (inputs.size() != input_shapes_.size() || !takes_layouts(inputs, output))
    throw Error("internal error: " + name_ + " asked for channels-last tensors it cannot take");
  input_channels_last_ = inputs;
  output_channels_last_ = output;
}
#endif

// Without CUDA every engine is a CPU engine (Engine refuses Device::Cuda).
void Layer::forward([[maybe_unused]] Device device, [[maybe_unused]] CudaContext* ctx, const LayerArgs& args) {
  check_args(args, false);
  NvtxRange range(forward_range_.c_str());
#if ANVIL_WITH_CUDA
  if (device == Device::Cuda) return forward_cuda(*ctx, args);
#endif
  forward_cpu(args);
}

void Layer::backward([[maybe_unused]] Device device, [[maybe_unused]] CudaContext* ctx, const LayerArgs& args) {
  check_args(args, true);
  NvtxRange range(backward_range_.c_str());
#if ANVIL_WITH_CUDA
  if (device == Device::Cuda) return backward_cuda(*ctx, args);
#endif
  backward_cpu(args);
}

}  // namespace anvil
