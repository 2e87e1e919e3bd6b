// The network description as plain typed structs: the JSON is read once, here,
// and every later stage (lowering, planning, building, running) reads these.
// Parsing checks every key and value; graph-level checks (inputs that exist,
// cycles, shapes) follow in lower/graph.cpp, with errors naming the same paths.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "anvil/output_file.hpp"
#include "anvil/network.hpp"
#include "anvil/tensor.hpp"
#include "engine/src/spec/layer_spec.hpp"
#include "kernels/loss_math.hpp"
#include "kernels/optimizer_math.hpp"

namespace anvil {

struct LossSpec {
  std::string type = "mse";  // mse, l1 or smooth_l1
  LossParams params;
};

struct OptimizerSpec {
  std::string type = "sgd";  // sgd, adam or adamw
  LrSchedule schedule;       // its base_lr is the optimizer's "lr"
  SgdHyper sgd;
  AdamHyper adam;
};

struct NetworkSpec {
  std::string name;
  std::string source;     // the file (or label) the text came from, for messages
  InputFile source_file;  // source as a file, when parsed: a checkpoint is never written over it
  Shape input;
  std::vector<LayerSpec> layers;  // in file order; the last one feeds the loss
  LossSpec loss;
  OptimizerSpec optimizer;
  Precision precision = Precision::TF32;
  uint64_t seed = 0;
  bool fuse = true;
  uint64_t hash = 0;  // of the parsed document, batch size, key order and whitespace aside: a network's identity
};

// Throws InputError "<source>: <json path>: <problem>". memory_budget: as parse_json_document.
NetworkSpec parse_network_spec(const std::string& json_text, const std::string& source, size_t memory_budget);

}  // namespace anvil
