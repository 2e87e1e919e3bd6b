// The layer contract (after Caffe's layer.hpp and tiny-cuda-nn's object.h).
//
// A layer declares its input count and parameters once. setup() sizes its
// output from its input shapes before anything runs. Layers never own their
// weights: they report parameter shapes and are handed pointers into the
// engine's slabs. The non-virtual forward()/backward() check the shapes they
// are handed, then call the per-backend *_impl methods. Each layer's file pairs
// its forward with its backward.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "anvil/engine.hpp"
#include "anvil/network.hpp"
#include "anvil/tensor.hpp"

namespace anvil {

class CudaContext;

struct ParamSpec {
  enum class Init { Uniform, Normal };
  std::string name;  // PyTorch state_dict name, e.g. "conv_transpose.weight"
  Shape shape;
  Init init = Init::Uniform;
  double bound = 0;  // Uniform: U(-bound, bound)
};

struct TensorView {
  float* data = nullptr;
  Shape shape;
};

// What an op needs besides its inputs, outputs and parameters, declared by
// the op and placed by the memory planner: a name, a size and a lifetime.
enum class BufferLife {
  Forward,   // scratch of the forward call
  Backward,  // scratch of the backward call
  Saved,     // written by forward, read by backward (scratch of forward when backward never runs)
};

struct BufferRequest {
  std::string name;  // shown by `anvil info` as "<layer>.<name>"
  size_t bytes = 0;  // 0: not needed in this configuration (its pointer is null)
  BufferLife life = BufferLife::Forward;
};

// What kind of op a layer is, for the fusion rules (lower/fusion_rules.cpp).
enum class OpKind { Conv, Pointwise, ChannelScale, Pool, Add, Fused };

// Everything one forward or backward call touches; all pointers are in the arena.
struct LayerArgs {
  std::vector<TensorView> in;
  TensorView out;
  std::vector<float*> params;
  // Backward only.
  TensorView dout;
  std::vector<TensorView> din;       // data == nullptr: that input needs no gradient
  std::vector<bool> din_accumulate;  // add into din (gradient fan-out) instead of overwriting
  std::vector<float*> dparams;
  // One pointer per buffers() entry, in declaration order; null where the
  // buffer has no bytes or its lifetime is not scheduled (Backward in inference).
  std::vector<void*> buffers;
  template <class T>
  T* buffer(size_t index) const {
    return static_cast<T*>(buffers[index]);
  }
};

struct BuildSettings {
  Precision precision = Precision::TF32;
  bool deterministic = true;
  bool autotune = false;    // cuDNN: the fastest measured algorithm instead of the heuristics' first
  bool phase_split = true;  // a strided backward-data relation may run phase-split (Convolution)
  size_t workspace_limit = size_t(256) << 20;
};

class Layer {
 public:
  Layer(std::string type, std::string name, std::string path);
  virtual ~Layer() = default;
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  const std::string& type() const { return type_; }
  const std::string& name() const { return name_; }
  const std::string& path() const { return path_; }  // JSON path, e.g. "layers[2]"

  virtual OpKind kind() const = 0;
  virtual int num_inputs() const { return 1; }  // -1: two or more
  // Checks the input shapes (InputError naming the JSON path) and sizes the output.
  const Shape& setup(const std::vector<Shape>& inputs);
  const std::vector<Shape>& input_shapes() const { return input_shapes_; }
  const Shape& output_shape() const { return output_shape_; }

  virtual std::vector<ParamSpec> param_specs() const { return {}; }
  size_t param_count() const { return param_count_; }  // of param_specs(), fixed at setup
  virtual bool backward_needs_inputs() const { return true; }
  virtual bool backward_needs_output() const { return false; }

  // Set by the engine before build: whether backward runs and the input gradient is wanted.
  virtual void set_gradient_needs(bool backward, bool input_grad) { (void)backward, (void)input_grad; }

  // The buffers this op needs on a device, fixed once built. Indices are the op's own.
  virtual std::vector<BufferRequest> buffers(Device) const { return {}; }
  virtual std::string describe_cuda() const { return ""; }

  // ctx is null on the CPU.
  void forward(Device device, CudaContext* ctx, const LayerArgs& args);
  void backward(Device device, CudaContext* ctx, const LayerArgs& args);

#if ANVIL_WITH_CUDA
  // CUDA build phase: descriptors and workspace sizes (called after setup),
  // then the algorithm search once the arena exists.
  virtual void build_cuda(CudaContext&, const BuildSettings&) {}
  virtual void choose_algorithms(CudaContext&, const LayerArgs& forward, const LayerArgs& backward) {
    (void)forward, (void)backward;
  }
  // Channels-last activations between layers (inference under tf32,
  // lower/channels_last.cpp): whether the op can run with its inputs and
  // output in these layouts (true: (N, spatial..., C)); every op runs all
  // packed. The layouts chosen are set before build_cuda.
  virtual bool takes_layouts(const std::vector<bool>& inputs, bool output) const;
  // Whether the op's own kernels compute channels-last (cuDNN's tensor-core
  // convs), so that passing its tensors so saves work rather than adds copies.
  virtual bool computes_channels_last() const { return false; }
  void set_channels_last(const std::vector<bool>& inputs, bool output);
  bool input_channels_last(size_t i) const { return i < input_channels_last_.size() && input_channels_last_[i]; }
  bool output_channels_last() const { return output_channels_last_; }

 protected:
  virtual void forward_cuda(CudaContext& ctx, const LayerArgs& args) = 0;
  virtual void backward_cuda(CudaContext& ctx, const LayerArgs& args) = 0;
#endif

 protected:
  virtual Shape infer_shape(const std::vector<Shape>& inputs) = 0;
  virtual void forward_cpu(const LayerArgs& args) = 0;
  virtual void backward_cpu(const LayerArgs& args) = 0;

  [[noreturn]] void fail(const std::string& key, const std::string& message) const;
#if ANVIL_WITH_CUDA
  // takes_layouts of an element-wise op: every input in the output's layout.
  static bool elementwise_layouts(const std::vector<bool>& inputs, bool output);
#endif
  // Fails unless x is (N, C) and `dims` spatial dims, as a 2-D or 3-D layer takes.
  void require_spatial_input(const Shape& x, int dims) const;
  std::string param_name(const std::string& suffix) const { return suffix.empty() ? name_ : name_ + "." + suffix; }

 private:
  void check_args(const LayerArgs& args, bool backward) const;

  std::string type_, name_, path_;
  std::vector<Shape> input_shapes_;
  Shape output_shape_;
  size_t param_count_ = 0;
  std::string forward_range_, backward_range_;  // profiler range names, made once
#if ANVIL_WITH_CUDA
  std::vector<bool> input_channels_last_;
  bool output_channels_last_ = false;
#endif
};

}  // namespace anvil
