// A set-up convolution layer (transposed or not) built from its spec, for the phase-split tests.
#pragma once

#include <memory>
#include <vector>

#include "layers/convolution.hpp"

namespace anvil::testing {

inline std::unique_ptr<Convolution> make_convolution(bool transposed, const std::vector<int64_t>& kernel,
                                                     const std::vector<int64_t>& stride,
                                                     const std::vector<int64_t>& padding,
                                                     const std::vector<int64_t>& output_padding,
                                                     const std::vector<int64_t>& in, int64_t cin, int64_t cout,
                                                     int64_t n) {
  ConvSpec spec;
  spec.dims = static_cast<int>(kernel.size());
  spec.transposed = transposed;
  spec.in_channels = cin;
  spec.out_channels = cout;
  spec.kernel = kernel;
  spec.stride = stride;
  spec.padding = padding;
  spec.output_padding = output_padding;
  spec.dilation.assign(kernel.size(), 1);
  const char* type = transposed ? "conv_transpose3d" : "conv3d";
  auto conv = std::make_unique<Convolution>(LayerSpec{type, "up", "layers[0]", {}, spec}, spec);
  Shape x = {n, cin};
  x.insert(x.end(), in.begin(), in.end());
  conv->setup({x});
  return conv;
}

inline std::unique_ptr<Convolution> make_conv_transpose(
    const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
    const std::vector<int64_t>& output_padding, const std::vector<int64_t>& in, int64_t cin, int64_t cout, int64_t n) {
  return make_convolution(true, kernel, stride, padding, output_padding, in, cin, cout, n);
}

}  // namespace anvil::testing
