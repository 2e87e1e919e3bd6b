// Reads one JSON object with typed accessors. Every problem becomes an
// InputError naming the JSON path ("layers[2].stride: must be ..."); finish()
// rejects keys nobody asked for, so typos never pass silently.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "anvil/tensor.hpp"

namespace anvil {

class JsonReader {
 public:
  JsonReader(const nlohmann::json& object, std::string path);

  const std::string& path() const { return path_; }
  std::string key_path(const std::string& key) const;
  bool has(const std::string& key) const;

  std::string string(const std::string& key);
  std::string string_or(const std::string& key, const std::string& fallback);
  bool boolean_or(const std::string& key, bool fallback);
  double number_or(const std::string& key, double fallback);  // within float's range
  int64_t integer_or(const std::string& key, int64_t fallback, int64_t min_value, int64_t max_value = INT64_MAX);
  // A shape: non-empty list of positive integers, each at most kMaxDimension.
  std::vector<int64_t> shape(const std::string& key);
  // An int or a list of `dims` ints, each >= min_value and at most kMaxDimension.
  // Missing key: fallback (already per-dim).
  std::vector<int64_t> per_dim(const std::string& key, int dims, int64_t min_value);
  std::vector<int64_t> per_dim_or(const std::string& key, int dims, int64_t min_value, std::vector<int64_t> fallback);
  std::vector<std::string> string_list(const std::string& key);
  const nlohmann::json& raw(const std::string& key);  // marks the key as used

  void finish() const;  // unknown keys -> error
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

 private:
  const nlohmann::json& get(const std::string& key);
  int64_t to_integer(const nlohmann::json& v, const std::string& where, int64_t min_value,
                     int64_t max_value = INT64_MAX) const;

  const nlohmann::json& object_;
  std::string path_;
  std::set<std::string> used_;
};

std::string describe_json_value(const nlohmann::json& v);  // "-1", "\"abc\"", "a list", ...

// Parses a whole JSON document. InputError: "invalid JSON: <where and why>"
// (nesting deeper than 128 levels included), "<path>: duplicate key" for a key
// an object already has, "<path>: number out of range" for a number beyond
// double's range, and "the JSON document would take more memory to hold than
// the X GiB available" where the parse would need more than memory_budget
// bytes (the callers pass parse_memory_budget(), the host's available memory):
// counted as it is read, before anything is built, since a document can take
// some 30 times its size as a JSON tree.
nlohmann::json parse_json_document(std::string_view text, size_t memory_budget);

}  // namespace anvil
