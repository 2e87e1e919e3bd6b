#include "engine/src/spec/json_reader.hpp"

#include "anvil/error.hpp"

namespace anvil {

JsonReader::JsonReader(const nlohmann::json& object, std::string path) : object_(object), path_(std::move(path)) {
  if (!object_.is_object()) throw InputError(path_ + ": must be an object, got " + describe_json_value(object_));
}

std::string JsonReader::key_path(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

bool JsonReader::has(const std::string& key) const { return object_.contains(key); }

void JsonReader::fail(const std::string& key, const std::string& message) const {
  const std::string where = key.empty() ? path_ : key_path(key);
  throw InputError((where.empty() ? "(top level)" : where) + ": " + message);
}

const nlohmann::json& JsonReader::get(const std::string& key) {
  if (!object_.contains(key)) fail(key, "missing required field");
  used_.insert(key);
  return object_.at(key);
}

const nlohmann::json& JsonReader::raw(const std::string& key) { return get(key); }

std::string JsonReader::string(const std::string& key) {
  const auto& v = get(key);
  if (!v.is_string()) fail(key, "must be a string, got " + describe_json_value(v));
  return v.get<std::string>();
}

std::string JsonReader::string_or(const std::string& key, const std::string& fallback) {
  return has(key) ? string(key) : fallback;
}

bool JsonReader::boolean_or(const std::string& key, bool fallback) {
  if (!has(key)) return fallback;
  const auto& v = get(key);
  if (!v.is_boolean()) fail(key, "must be true or false, got " + describe_json_value(v));
  return v.get<bool>();
}

double JsonReader::number_or(const std::string& key, double fallback) {
  if (!has(key)) return fallback;
  const auto& v = get(key);
  if (!v.is_number()) fail(key, "must be a number, got " + describe_json_value(v));
  return v.get<double>();
}

int64_t JsonReader::to_integer(const nlohmann::json& v, const std::string& where, int64_t min_value) const {
  const std::string want = min_value == 1   ? "a positive integer"
                           : min_value == 0 ? "a non-negative integer"
                                            : "an integer >= " + std::to_string(min_value);
  if (!v.is_number_integer()) throw InputError(where + ": must be " + want + ", got " + describe_json_value(v));
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
    throw InputError(where + ": " + describe_json_value(v) + " is too large");
  const int64_t x = v.get<int64_t>();
  if (x < min_value) throw InputError(where + ": must be " + want + ", got " + describe_json_value(v));
  return x;
}

int64_t JsonReader::integer_or(const std::string& key, int64_t fallback, int64_t min_value) {
  if (!has(key)) return fallback;
  return to_integer(get(key), key_path(key), min_value);
}

std::vector<int64_t> JsonReader::shape(const std::string& key) {
  const auto& v = get(key);
  if (!v.is_array() || v.empty()) fail(key, "must be a non-empty list of positive integers, got " + describe_json_value(v));
  std::vector<int64_t> out;
  for (size_t i = 0; i < v.size(); ++i) out.push_back(to_integer(v[i], key_path(key) + "[" + std::to_string(i) + "]", 1));
  return out;
}

std::vector<int64_t> JsonReader::per_dim(const std::string& key, int dims, int64_t min_value) {
  const auto& v = get(key);
  if (v.is_array()) {
    if (static_cast<int>(v.size()) != dims)
      fail(key, "must be an integer or a list of " + std::to_string(dims) + " integers, got a list of " +
                    std::to_string(v.size()));
    std::vector<int64_t> out;
    for (size_t i = 0; i < v.size(); ++i)
      out.push_back(to_integer(v[i], key_path(key) + "[" + std::to_string(i) + "]", min_value));
    return out;
  }
  return std::vector<int64_t>(dims, to_integer(v, key_path(key), min_value));
}

std::vector<int64_t> JsonReader::per_dim_or(const std::string& key, int dims, int64_t min_value,
                                              std::vector<int64_t> fallback) {
  return has(key) ? per_dim(key, dims, min_value) : fallback;
}

std::vector<std::string> JsonReader::string_list(const std::string& key) {
  const auto& v = get(key);
  if (!v.is_array()) fail(key, "must be a list of names, got " + describe_json_value(v));
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_string())
      throw InputError(key_path(key) + "[" + std::to_string(i) + "]: must be a name, got " + describe_json_value(v[i]));
    out.push_back(v[i].get<std::string>());
  }
  return out;
}

void JsonReader::finish() const {
  for (const auto& item : object_.items())
    if (!used_.count(item.key())) throw InputError(key_path(item.key()) + ": unknown key");
}

std::string describe_json_value(const nlohmann::json& v) {
  if (v.is_array()) return "a list";
  if (v.is_object()) return "an object";
  if (v.is_null()) return "null";
  std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

}  // namespace anvil
