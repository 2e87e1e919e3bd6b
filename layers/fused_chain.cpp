#include "layers/fused_chain.hpp"

#include <array>

#include "anvil/error.hpp"
#include "layers/pooling.hpp"

namespace anvil {

std::optional<FusedChain> fused_chain(const std::vector<const LayerSpec*>& pointwise) {
  if (pointwise.size() > size_t(cuda::kMaxChainOps)) return std::nullopt;
  FusedChain chain;
  for (const LayerSpec* spec : pointwise) {
    const int i = chain.ops.ops++;
    if (const auto* act = std::get_if<PointwiseSpec>(&spec->params)) {
      chain.ops.activation[i] = act->op;
      chain.ops.param[i] = act->param;
    } else if (std::holds_alternative<ChannelScaleSpec>(spec->params)) {
      chain.ops.is_scale[i] = true;
      chain.scale_names.push_back(spec->name);
    } else {
      return std::nullopt;
    }
  }
  return chain;
}

cuda::EpilogueChain bind_chain(const FusedChain& chain, const std::vector<float*>& params, size_t first) {
  cuda::EpilogueChain bound = chain.ops;
  for (int i = 0; i < bound.ops; ++i)
    if (bound.is_scale[i]) bound.scale[i] = params.at(first++);
  return bound;
}

cuda::ChainGrads chain_grads(const FusedChain& chain, const std::vector<float*>& dparams, size_t first, float* dbias) {
  cuda::ChainGrads grads;
  grads.dbias = dbias;
  for (int i = 0; i < chain.ops.ops; ++i)
    if (chain.ops.is_scale[i]) grads.dscale[i] = first < dparams.size() ? dparams[first++] : nullptr;
  return grads;
}

bool pool_tiles_output(const PoolSpec& pool, const Shape& conv_output) {
  if (!pool.max || pool.stride != pool.kernel) return false;
  int64_t window = 1;
  for (size_t d = 0; d < pool.kernel.size(); ++d) {
    if (pool.padding[d] != 0 || conv_output[2 + d] % pool.kernel[d] != 0) return false;
    window *= pool.kernel[d];
  }
  return window <= 256;  // the argmax is one byte
}

bool fusable_pool(const PoolSpec& pool, const Shape& conv_output) {
  return pool_tiles_output(pool, conv_output) || Pooling::anvil_kernel_takes(pool);
}

cuda::ChainPoolGeometry chain_pool_geometry(const Shape& y, const std::optional<PoolSpec>& pool) {
  cuda::ChainPoolGeometry g;
  g.n = y[0];
  g.c = y[1];
  g.y = cpu::lift_dims({y.begin() + 2, y.end()}, 1);
  if (pool) {
    g.pool = pool->max ? cuda::ChainPool::Max : cuda::ChainPool::Avg;
    g.k = cpu::lift_dims(pool->kernel, 1);
    g.stride = cpu::lift_dims(pool->stride, 1);
    g.pad = cpu::lift_dims(pool->padding, 0);
  }
  return g;
}

Shape chain_pool_output_shape(const Shape& y, const std::optional<PoolSpec>& pool) {
  Shape p = y;
  const std::array<int64_t, 3> out = cuda::chain_pool_output(chain_pool_geometry(y, pool));
  const size_t dims = p.size() - 2;
  for (size_t i = 0; i < dims; ++i) p[2 + i] = out[3 - dims + i];
  return p;
}

std::vector<ParamSpec> chain_param_specs(const Shape& y, const std::vector<std::string>& scale_names) {
  std::vector<ParamSpec> specs;
  Shape m(y.size() - 1, 1);
  m[0] = y[1];
  for (const std::string& name : scale_names) specs.push_back({name, m, ParamSpec::Init::Normal, 0});
  return specs;
}

namespace {
[[noreturn]] void no_cpu_path(const Layer& layer) {
  throw Error("internal error: fused layer '" + layer.name() + "' has no CPU path; the CPU backend runs unfused");
}
}  // namespace

void FusedLayer::forward_cpu(const LayerArgs&) { no_cpu_path(*this); }
void FusedLayer::backward_cpu(const LayerArgs&) { no_cpu_path(*this); }

}  // namespace anvil
