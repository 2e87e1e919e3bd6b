#include "kernels/cpu/optimizer.hpp"

namespace anvil::cpu {

template <class T>
void sgd_update(T* p, const T* g, T* buf, int64_t n, const SgdHyper& hyper, const StepState& state) {
  const bool use_momentum = hyper.momentum != 0.f;
  for (int64_t i = 0; i < n; ++i) {
    T unused = T(0);
    sgd_element(p[i], g[i], use_momentum ? buf[i] : unused, hyper, state);
  }
}

template <class T>
void adam_update(T* p, const T* g, T* m, T* v, int64_t n, const AdamHyper& hyper, const StepState& state) {
  for (int64_t i = 0; i < n; ++i) adam_element(p[i], g[i], m[i], v[i], hyper, state);
}

#define ANVIL_INSTANTIATE_OPTIMIZER(T)                                                       \
  template void sgd_update<T>(T*, const T*, T*, int64_t, const SgdHyper&, const StepState&); \
  template void adam_update<T>(T*, const T*, T*, T*, int64_t, const AdamHyper&, const StepState&);

ANVIL_INSTANTIATE_OPTIMIZER(float)
ANVIL_INSTANTIATE_OPTIMIZER(double)

}  // namespace anvil::cpu
