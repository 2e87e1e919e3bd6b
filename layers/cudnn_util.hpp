// RAII wrappers for cuDNN descriptors. N-d descriptors throughout, so 2-D
// and 3-D layers share one code path.
#pragma once

#include <cudnn.h>

#include <limits>
#include <string>
#include <vector>

#include "anvil/error.hpp"
#include "engine/src/cuda/check.hpp"
#include "anvil/tensor.hpp"

namespace anvil {

template <class T, cudnnStatus_t (*Create)(T*), cudnnStatus_t (*Destroy)(T)>
class CudnnDescriptor {
 public:
  CudnnDescriptor() { ANVIL_CUDNN_CHECK(Create(&desc_)); }
  ~CudnnDescriptor() { Destroy(desc_); }
  CudnnDescriptor(const CudnnDescriptor&) = delete;
  CudnnDescriptor& operator=(const CudnnDescriptor&) = delete;
  operator T() const { return desc_; }

 private:
  T desc_{};
};

using TensorDescriptor =
    CudnnDescriptor<cudnnTensorDescriptor_t, cudnnCreateTensorDescriptor, cudnnDestroyTensorDescriptor>;
using FilterDescriptor =
    CudnnDescriptor<cudnnFilterDescriptor_t, cudnnCreateFilterDescriptor, cudnnDestroyFilterDescriptor>;
using ConvolutionDescriptor =
    CudnnDescriptor<cudnnConvolutionDescriptor_t, cudnnCreateConvolutionDescriptor, cudnnDestroyConvolutionDescriptor>;
using PoolingDescriptor =
    CudnnDescriptor<cudnnPoolingDescriptor_t, cudnnCreatePoolingDescriptor, cudnnDestroyPoolingDescriptor>;

// Each axis's stride of a tensor of these dims: packed, (N, C, spatial...)
// row-major; channels-last, C innermost, then the spatial axes, then N.
inline std::vector<int64_t> layout_strides(const std::vector<int64_t>& dims, bool channels_last) {
  std::vector<int64_t> strides(dims.size());
  int64_t stride = 1;
  if (channels_last) {
    strides[1] = stride;
    stride *= dims[1];
    for (size_t i = dims.size(); i-- > 2;) {
      strides[i] = stride;
      stride *= dims[i];
    }
    strides[0] = stride;
  } else {
    for (size_t i = dims.size(); i-- > 0;) {
      strides[i] = stride;
      stride *= dims[i];
    }
  }
  return strides;
}

// A float tensor, packed NC(D)HW or channels-last. cuDNN's descriptors count in int: larger tensors are refused here.
inline void set_tensor_descriptor(cudnnTensorDescriptor_t desc, const Shape& shape, bool channels_last = false) {
  if (numel(shape) > std::numeric_limits<int>::max())
    throw Error("cuDNN takes tensors of at most 2^31 - 1 elements; " + to_string(shape) + " has " +
                std::to_string(numel(shape)) + " (the CPU backend has no such limit)");
  const std::vector<int64_t> strides64 = layout_strides(shape, channels_last);
  std::vector<int> dims(shape.begin(), shape.end()), strides(strides64.begin(), strides64.end());
  ANVIL_CUDNN_CHECK(
      cudnnSetTensorNdDescriptor(desc, CUDNN_DATA_FLOAT, static_cast<int>(dims.size()), dims.data(), strides.data()));
}

// dst = src in the other layout (cuDNN's transform, on the handle's stream).
inline void copy_to_layout(cudnnHandle_t handle, const Shape& shape, const float* src, bool src_channels_last,
                           float* dst) {
  TensorDescriptor from, to;
  set_tensor_descriptor(from, shape, src_channels_last);
  set_tensor_descriptor(to, shape, !src_channels_last);
  const float one = 1.f, zero = 0.f;
  ANVIL_CUDNN_CHECK(cudnnTransformTensor(handle, &one, from, src, &zero, to, dst));
}

}  // namespace anvil
