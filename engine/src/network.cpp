#include "anvil/network.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "anvil/error.hpp"
#include "anvil/output_file.hpp"
#include "engine/src/lower/fusion_rules.hpp"
#include "engine/src/lower/graph.hpp"
#include "engine/src/run/host_memory.hpp"
#include "engine/src/spec/network_spec.hpp"

namespace anvil {

const char* to_string(Precision p) {
  return p == Precision::FP32 ? "fp32" : p == Precision::TF32 ? "tf32" : "not a Precision";
}

Network Network::load(const std::string& path) {
  // Checked before opening: a FIFO would block the open, and /dev/zero never ends.
  constexpr std::uintmax_t kMaxNetworkFileBytes = 100'000'000;
  check_path_text(path);
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (std::filesystem::is_directory(status))
    throw InputError(path + ": cannot read the network file: it is a directory");
  if (std::filesystem::exists(status) && !std::filesystem::is_regular_file(status))
    throw InputError(path + ": cannot read the network file: not a regular file");
  if (std::filesystem::is_regular_file(status) && std::filesystem::file_size(path, ec) > kMaxNetworkFileBytes)
    throw InputError(path + ": the network file is larger than 100 MB");
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const std::string why = errno != 0 ? std::string(": ") + std::strerror(errno) : "";
    throw InputError(path + ": cannot open the network file" + why);
  }
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) throw InputError(path + ": cannot read the network file");
  return parsed(text.str(), path, InputFile::read_now(path));
}

Network Network::parse(const std::string& json_text, const std::string& source) {
  return parsed(json_text, source, InputFile{});
}

// The text is parsed once into a spec; building the graph here checks inputs, cycles and shapes.
Network Network::parsed(const std::string& json_text, const std::string& source, const InputFile& file) {
  try {
    NetworkSpec spec = parse_network_spec(json_text, source, parse_memory_budget());
    spec.source_file = file;
    return built(std::make_shared<const NetworkSpec>(std::move(spec)));
  } catch (const InputError& e) {
    throw InputError(source + ": " + e.what());
  }
}

Network Network::built(std::shared_ptr<const NetworkSpec> spec) {
  Network net;
  net.graph_ = Graph::build(spec);  // a graph keeps its own spec: the one it was built from
  net.spec_ = std::move(spec);
  return net;
}

Network Network::with_batch(int64_t batch) const {
  if (batch < 1 || batch > kMaxDimension)
    throw InputError("batch size must be an integer from 1 to " + std::to_string(kMaxDimension) + ", got " +
                     std::to_string(batch));
  auto spec = std::make_shared<NetworkSpec>(this->spec());
  spec->input[0] = batch;
  try {
    return built(spec);
  } catch (const InputError& e) {
    throw InputError(spec->source + ": at batch " + std::to_string(batch) + ": " + e.what());
  }
}

Network Network::with_precision(Precision precision) const {
  // A value made by a cast would be read as tf32 by some layers and as fp32 by others.
  if (precision != Precision::TF32 && precision != Precision::FP32)
    throw InputError("with_precision: " + std::to_string(static_cast<int>(precision)) + " is not a Precision");
  auto spec = std::make_shared<NetworkSpec>(this->spec());
  spec->precision = precision;
  return built(std::move(spec));
}

namespace {
[[noreturn]] void empty_network() {
  throw Error("an empty anvil::Network (moved from): make one with Network::load or Network::parse");
}
}  // namespace

const NetworkSpec& Network::spec() const {
  if (!spec_) empty_network();
  return *spec_;
}

const Graph& Network::graph() const {
  if (!graph_) empty_network();
  return *graph_;
}

std::unique_ptr<Graph> Network::build_graph() const {
  spec();
  return Graph::build(spec_);
}

const std::string& Network::name() const { return spec().name; }
const std::string& Network::source() const { return spec().source; }
uint64_t Network::seed() const { return spec().seed; }
Precision Network::precision() const { return spec().precision; }
bool Network::fuse() const { return spec().fuse; }
const Shape& Network::input_shape() const { return graph().tensors[0].shape; }
const Shape& Network::output_shape() const { return graph().tensors[graph().output].shape; }

std::vector<LayerSummary> Network::layers() const {
  std::vector<LayerSummary> out;
  for (const auto& node : graph().nodes) {
    LayerSummary s;
    s.name = node.layer->name();
    s.type = node.layer->type();
    for (int t : node.inputs) s.inputs.push_back(graph().tensors[t].name);
    s.output_shape = node.layer->output_shape();
    for (const auto& p : node.layer->param_specs()) s.param_count += numel(p.shape);
    out.push_back(s);
  }
  return out;
}

std::vector<std::vector<std::string>> Network::fusion_groups() const {
  std::vector<std::vector<std::string>> out;
  for (const auto& match : find_fusions(graph())) {
    std::vector<std::string> names;
    for (int n : match.nodes) names.push_back(graph().nodes[n].layer->name());
    out.push_back(names);
  }
  return out;
}

int64_t Network::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : graph().params()) n += numel(p.shape);
  return n;
}

}  // namespace anvil
