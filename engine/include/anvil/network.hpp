// A validated network description. Loading checks everything (types, keys,
// values, shapes, the DAG) before anything is allocated, and throws
// InputError with one line: "<file>: <json path>: <problem>".
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "anvil/optimizer.hpp"
#include "anvil/tensor.hpp"

namespace anvil {

class Graph;  // engine-internal: named tensors, layers, topological order

enum class Precision { TF32, FP32 };
const char* to_string(Precision p);

struct LayerSummary {
  std::string name, type;
  std::vector<std::string> inputs;
  Shape output_shape;
  int64_t param_count = 0;
};

class Network {
 public:
  static Network load(const std::string& path);
  static Network parse(const std::string& json_text, const std::string& source);

  const std::string& name() const { return name_; }
  const std::string& source() const { return source_; }
  const Shape& input_shape() const;
  const Shape& output_shape() const;
  uint64_t seed() const { return seed_; }
  Precision precision() const { return precision_; }
  const SgdParams& sgd() const { return sgd_; }
  bool fuse() const { return fuse_; }
  std::vector<LayerSummary> layers() const;
  // Groups of layer names that the fusion pass merges into one kernel.
  std::vector<std::vector<std::string>> fusion_groups() const;
  int64_t parameter_count() const;

  // A new graph with fresh layer objects, for an engine to own.
  std::unique_ptr<Graph> build_graph() const;

 private:
  std::string name_, source_, text_;
  uint64_t seed_ = 0;
  Precision precision_ = Precision::TF32;
  SgdParams sgd_;
  bool fuse_ = true;
  std::shared_ptr<const Graph> graph_;
};

}  // namespace anvil
