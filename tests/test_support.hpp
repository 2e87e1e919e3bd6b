// Shared helpers for the parity tests: loading reference cases and comparing
// tensors by relative L2 error, reporting the worst and first mismatches.
#pragma once

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "anvil/engine.hpp"
#include "anvil/safetensors.hpp"

namespace anvil::testing {

inline std::string data_path(const std::string& file) { return std::string(ANVIL_TEST_DATA_DIR) + "/" + file; }
inline std::string source_path(const std::string& file) { return std::string(ANVIL_SOURCE_DIR) + "/" + file; }

inline std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The network with its JSON edited (precision, fuse, input shape, ...).
inline Network network_with(const std::string& path, const nlohmann::json& overrides) {
  nlohmann::json doc = nlohmann::json::parse(read_text(path));
  for (const auto& item : overrides.items()) doc[item.key()] = item.value();
  return Network::parse(doc.dump(), path);
}

// ||got - want|| / ||want||, with the largest element difference and the first
// elements that differ by more than tol * rms(want) named in the failure message.
inline ::testing::AssertionResult close(const std::string& what, const HostTensor& got, const HostTensor& want,
                                        double tol) {
  if (got.shape != want.shape)
    return ::testing::AssertionFailure() << what << ": shape " << to_string(got.shape) << " vs reference "
                                         << to_string(want.shape);
  double diff2 = 0, ref2 = 0, max_abs = 0;
  int64_t worst = 0;
  bool nan = false;
  for (int64_t i = 0; i < want.size(); ++i) {
    const double d = double(got.data[i]) - double(want.data[i]);
    nan = nan || std::isnan(got.data[i]);
    diff2 += d * d;
    ref2 += double(want.data[i]) * want.data[i];
    if (std::fabs(d) > max_abs) max_abs = std::fabs(d), worst = i;
  }
  const double rel = std::sqrt(diff2) / std::max(std::sqrt(ref2), 1e-30);
  if (!nan && rel <= tol) return ::testing::AssertionSuccess() << what << ": rel L2 " << rel;
  std::ostringstream msg;
  msg << what << ": rel L2 error " << rel << " > " << tol << (nan ? " (NaN in result)" : "") << "; max |diff| "
      << max_abs << " at " << worst << " (got " << got.data[worst] << ", want " << want.data[worst]
      << "); first mismatches:";
  const double rms = std::sqrt(ref2 / std::max<int64_t>(want.size(), 1));
  int shown = 0;
  for (int64_t i = 0; i < want.size() && shown < 5; ++i)
    if (!(std::fabs(double(got.data[i]) - want.data[i]) <= tol * rms + 1e-30))
      msg << " [" << i << "] " << got.data[i] << " vs " << want.data[i], ++shown;
  return ::testing::AssertionFailure() << msg.str();
}

inline bool bitwise_equal(const HostTensor& a, const HostTensor& b) {
  return a.shape == b.shape && std::memcmp(a.data.data(), b.data.data(), a.data.size() * sizeof(float)) == 0;
}

// The tensors of `file` named like the entries of `like` (e.g. a network's parameters).
inline std::map<std::string, HostTensor> same_names(const TensorFile& file,
                                                    const std::map<std::string, HostTensor>& like) {
  std::map<std::string, HostTensor> out;
  for (const auto& entry : like) out[entry.first] = file.tensors.at(entry.first);
  return out;
}

}  // namespace anvil::testing
