// CPU losses (see kernels/loss_math.hpp for the math): mse, l1 and smooth_l1,
// mean over the elements.
#pragma once

#include <cstdint>

#include "kernels/loss_math.hpp"

namespace anvil::cpu {

// Returns the mean loss of pred against target and, unless dpred is null
// (evaluation only), writes its gradient w.r.t. pred. The sum is in double, in
// index order.
// valid_count (in [1, count]; negative: count): only the first valid_count
// elements count; the others get a zero gradient (a partial batch padded to the full batch).
template <class T>
T loss_forward_backward(const LossParams& params, const T* pred, const T* target, T* dpred, int64_t count,
                        int64_t valid_count = -1);

}  // namespace anvil::cpu
