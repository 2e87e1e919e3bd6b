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

// A packed NC(D)HW float tensor. cuDNN's descriptors count in int: larger tensors are refused here.
inline void set_tensor_descriptor(cudnnTensorDescriptor_t desc, const Shape& shape) {
  if (numel(shape) > std::numeric_limits<int>::max())
    throw Error("cuDNN takes tensors of at most 2^31 - 1 elements; " + to_string(shape) + " has " +
                std::to_string(numel(shape)) + " (the CPU backend has no such limit)");
  std::vector<int> dims(shape.begin(), shape.end()), strides(shape.size());
  int stride = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    strides[i] = stride;
    stride *= dims[i];
  }
  ANVIL_CUDNN_CHECK(cudnnSetTensorNdDescriptor(desc, CUDNN_DATA_FLOAT, static_cast<int>(dims.size()), dims.data(),
                                               strides.data()));
}

}  // namespace anvil
