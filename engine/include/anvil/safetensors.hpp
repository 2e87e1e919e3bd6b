// safetensors files: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}} with an optional "__metadata__" of
// strings, then the raw little-endian data. Every bound is checked on read;
// writes go to a temporary file that is renamed into place, so a failed write
// never leaves a half-written file.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "anvil/tensor.hpp"

namespace anvil {

struct TensorFile {
  // F32 as stored; F16 and BF16 widened exactly; F64 rounded to the nearest float32.
  std::map<std::string, HostTensor> tensors;
  std::map<std::string, std::string> metadata;
  // Integer and bool tensors (e.g. BatchNorm's num_batches_tracked, I64): not float data, so not
  // read, only listed, name -> dtype, so callers can report them.
  std::map<std::string, std::string> skipped;
};

// Maps the file read-only and copies the tensors out of the mapping (a file truncated by another
// process while it is read is out of scope: it can raise SIGBUS). Throws InputError naming the file
// and the problem, and naming the tensor for a dtype other than the float and integer ones, and for
// an F64 value beyond float32's range (it would become Inf); Error if the file cannot be mapped.
TensorFile read_safetensors(const std::string& path);
// Writes F32 tensors (`skipped` is not written). Throws InputError for tensors or metadata it cannot
// write (a tensor whose data does not fill its shape, and the header refusals below: the caller's
// names, shapes and metadata), Error if the file cannot be written.
void write_safetensors(const std::string& path, const TensorFile& file);
// Throws the InputError write_safetensors would give for a file of tensors of these names and shapes and
// this metadata whose header cannot be written (over the readers' 100 MB limit, not valid UTF-8, or a
// negative dimension or data of 2^63 bytes or more, which no reader takes),
// before the data exists: a writer at the end of a long run checks at its start.
void check_safetensors_header(const std::string& path, const std::map<std::string, Shape>& shapes,
                              const std::map<std::string, std::string>& metadata);

// Looks up a tensor and checks its shape; throws InputError naming file, tensor and shapes (or the
// dtype, for a tensor that was skipped).
const HostTensor& require_tensor(const TensorFile& file, const std::string& path, const std::string& name,
                                 const Shape& expected);

// The parameters a network takes from a weights file (a PyTorch state_dict or an anvil checkpoint).
struct ParameterSelection {
  std::map<std::string, HostTensor> parameters;  // every expected parameter, by name
  std::vector<std::string> unused;               // the file's other tensors, skipped ones included, sorted
};

// Picks the tensors named in `parameter_shapes` out of `file` (read from `path`): copies of them,
// or, from a file given as an rvalue, the tensors themselves (a second copy of a model's weights may
// not fit). Throws InputError naming the file and the tensor for a missing parameter, a wrong shape
// or a non-float dtype, and, when `strict`, for unused tensors (unused_tensors_message + " (--strict)").
ParameterSelection select_parameters(const TensorFile& file, const std::string& path,
                                     const std::map<std::string, Shape>& parameter_shapes, bool strict);
ParameterSelection select_parameters(TensorFile&& file, const std::string& path,
                                     const std::map<std::string, Shape>& parameter_shapes, bool strict);

// One line: "w.safetensors: 2 tensors are not parameters of this network: bn.num_batches_tracked, head.extra".
std::string unused_tensors_message(const std::string& path, const std::vector<std::string>& unused);

}  // namespace anvil
