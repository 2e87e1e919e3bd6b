// safetensors files: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}} with an optional "__metadata__" of
// strings, then the raw little-endian data. Every bound is checked on read;
// writes go to a temporary file that is renamed into place, so a failed write
// never leaves a half-written file.
#pragma once

#include <map>
#include <string>

#include "anvil/tensor.hpp"

namespace anvil {

struct TensorFile {
  std::map<std::string, HostTensor> tensors;       // F64 is converted to float32 on read
  std::map<std::string, std::string> metadata;
};

// Throws InputError naming the file and the problem.
TensorFile read_safetensors(const std::string& path);
// Writes F32 tensors. Throws Error if the file cannot be written.
void write_safetensors(const std::string& path, const TensorFile& file);

// Looks up a tensor and checks its shape; throws InputError naming file, tensor and shapes.
const HostTensor& require_tensor(const TensorFile& file, const std::string& path, const std::string& name,
                                 const Shape& expected);

}  // namespace anvil
