// A validated network description. Loading checks everything (types, keys,
// values, shapes, the DAG) before anything is allocated, and throws
// InputError with one line: "<file>: <json path>: <problem>".
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "anvil/tensor.hpp"

namespace anvil {

struct InputFile;    // output_file.hpp: a file an engine read
struct NetworkSpec;  // engine-internal: the parsed description
class Graph;         // engine-internal: ops, tensors, topological order

enum class Precision { TF32, FP32 };
const char* to_string(Precision p);  // "fp32", "tf32"; "not a Precision" for a value cast from another

struct LayerSummary {
  std::string name, type;
  std::vector<std::string> inputs;
  Shape output_shape;
  int64_t param_count = 0;
};

class Network {
 public:
  static Network load(const std::string& path);
  // source names the text in messages (and source()); it is a label, never read as a path: only a
  // network made by load knows its file, which its engine's checkpoints refuse to overwrite.
  static Network parse(const std::string& json_text, const std::string& source);
  // The same network at another batch size (InputError if its shapes do not allow it).
  Network with_batch(int64_t batch) const;
  // The same network under another precision (the CLI's --precision). Its hash, the identity a
  // checkpoint records, stays the file's: like --no-fuse, precision is how a run computes.
  // InputError for a value that is not a Precision (made by a cast).
  Network with_precision(Precision precision) const;

  const std::string& name() const;
  const std::string& source() const;
  const Shape& input_shape() const;
  const Shape& output_shape() const;
  uint64_t seed() const;
  Precision precision() const;
  bool fuse() const;
  std::vector<LayerSummary> layers() const;
  // Groups of layer names that the fusion pass merges into one kernel. A forward-only tf32 CUDA
  // engine may also fuse a conv alone, for its layouts (Engine::describe shows the ops as built).
  std::vector<std::vector<std::string>> fusion_groups() const;
  int64_t parameter_count() const;

  // Engine-internal: the parsed description, and a new graph of fresh ops built from it.
  const NetworkSpec& spec() const;
  std::unique_ptr<Graph> build_graph() const;

 private:
  Network() = default;  // a Network is made by load, parse, with_batch or with_precision: never empty
  // The network of spec, its graph built (and so the spec validated) from it.
  static Network built(std::shared_ptr<const NetworkSpec> spec);
  // parse, for the text of `file` where it was read from one (load).
  static Network parsed(const std::string& json_text, const std::string& source, const InputFile& file);
  const Graph& graph() const;
  // Every accessor goes through spec() or graph(), which refuse a moved-from (empty) Network.
  std::shared_ptr<const NetworkSpec> spec_;
  std::shared_ptr<const Graph> graph_;  // validated at parse; read by the accessors
};

}  // namespace anvil
