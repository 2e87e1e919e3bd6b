#include "engine/src/spec/json_reader.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <vector>

#include "anvil/error.hpp"
#include "anvil/tensor.hpp"
#include "anvil/plan.hpp"

namespace anvil {

namespace {

// serde_json's nesting limit, which the reference safetensors reader inherits. No
// network or tensor header comes near it, and without it a long run of '[' costs
// a frame here and a value in the document per byte (gigabytes for a 100 MB header).
constexpr size_t kMaxNesting = 128;

// nlohmann's message is "[json.exception.parse_error.101] parse error at line 3, column 5: ...",
// and it echoes the bytes it last read ("last read: '\"\xff'"): those beyond ASCII are written as
// \xHH, so that the message is valid UTF-8 whatever the file held.
std::string parse_message(const std::string& what) {
  const size_t cut = what.find("] ");
  std::string message;
  for (size_t i = cut == std::string::npos ? 0 : cut + 2; i < what.size(); ++i) {
    const auto byte = static_cast<unsigned char>(what[i]);
    if (byte < 0x80)
      message += what[i];
    else
      Error::append_hex(message, byte);
  }
  return message;
}

// What parsing the document into nlohmann::json takes, counted from above
// with libstdc++'s and glibc's sizes: a value is one slot in its container,
// and an array's buffer may hold twice its elements while it grows and is
// copied at each growth (3 slots an element); an object is a std::map and each
// member a tree node (its header, key and value); a string value or an array
// a heap object of its own; a string or key beyond the 15 bytes kept inline a
// buffer of its own. The checker's own copies of the keys count as much again
// as the members. Besides, the lexer keeps two buffers as long as the longest
// token yet (its text and its decoded value, each grown by doubling).
constexpr size_t kMallocOverhead = 16;
constexpr size_t kValueSlot = sizeof(nlohmann::json), kArraySlots = 3 * kValueSlot;
constexpr size_t kObjectBytes = sizeof(nlohmann::json::object_t) + kMallocOverhead;
constexpr size_t kMemberBytes = 32 + sizeof(nlohmann::json::object_t::value_type) + kMallocOverhead;
constexpr size_t kHeapObjectBytes =
    std::max(sizeof(nlohmann::json::string_t), sizeof(nlohmann::json::array_t)) + kMallocOverhead;
// glibc's chunk for a string's buffer of length + 1 bytes: its 8-byte header, rounded to 16, at least 32.
size_t buffer_bytes(size_t length) { return length > 15 ? std::max<size_t>(32, (length + 1 + 8 + 15) / 16 * 16) : 0; }
size_t doubled_capacity(size_t n) {
  size_t c = 16;
  while (c < n) c *= 2;
  return c;
}

// A first pass over the document that builds nothing: it follows where the
// parser is, as a JSON path ("layers[2].stride"), with one frame per open
// object (its keys so far and the current one) or list (the current index),
// and refuses a key an object already has, nesting beyond kMaxNesting, a
// number beyond double's range (or so small it would read as 0), naming
// where, and a document that would take more than memory_budget bytes to
// hold. (nlohmann's parser callback could do this in the same pass, but it
// rescans a list at each object's end: quadratic in a list of many layers.)
class JsonChecker : public nlohmann::json_sax<nlohmann::json> {
 public:
  JsonChecker(std::string_view text, size_t memory_budget) : text_bytes_(text.size()), budget_(memory_budget) {}

  bool null() override { return next_element(0); }
  bool boolean(bool) override { return next_element(0); }
  bool number_integer(number_integer_t) override { return next_element(0); }
  bool number_unsigned(number_unsigned_t) override { return next_element(0); }
  bool number_float(number_float_t value, const string_t& text) override {
    // "1e-400": below double's range, strtod gives 0; a value the file did not say.
    if (value == 0 && text.find_first_of("123456789") < text.find_first_of("eE"))
      throw InputError(path(true) + ": number out of range (" + text + " reads as 0)");
    token(text.size(), text.size());
    return next_element(0);
  }
  bool string(string_t& value) override {
    token(quoted(value.size()), value.size());
    return next_element(kHeapObjectBytes + buffer_bytes(value.size()));
  }
  bool binary(binary_t&) override { return next_element(0); }
  bool start_object(std::size_t) override { return open(true); }
  bool start_array(std::size_t) override { return open(false); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }
  bool key(string_t& key) override {
    Frame& f = frames_.back();
    f.key = key;
    if (!f.keys.insert(f.key).second) throw InputError(path(false) + ": duplicate key");
    token(quoted(key.size()), key.size());
    take(2 * (kMemberBytes + buffer_bytes(key.size())));
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    if (dynamic_cast<const nlohmann::json::out_of_range*>(&e) != nullptr)  // "1e400": beyond double
      throw InputError(path(true) + ": number out of range");
    throw InputError("invalid JSON: " + parse_message(e.what()));
  }

 private:
  struct Frame {
    bool object;
    std::set<std::string> keys;
    std::string key;
    int64_t index;
  };

  // The path of the current key or element; `unread`: the innermost list's
  // next element, which the parser has not reached the end of.
  std::string path(bool unread) const {
    std::string p;
    for (size_t i = 0; i < frames_.size(); ++i) {
      const Frame& f = frames_[i];
      if (f.object)
        p += (p.empty() ? "" : ".") + f.key;
      else
        p += "[" + std::to_string(f.index + (unread && i + 1 == frames_.size() ? 1 : 0)) + "]";
    }
    return p.empty() ? "(top level)" : p;
  }
  bool open(bool object) {
    if (frames_.size() == kMaxNesting)
      throw InputError("invalid JSON: nested more than " + std::to_string(kMaxNesting) + " levels deep");
    next_element(object ? kObjectBytes : kHeapObjectBytes);
    frames_.push_back({object, {}, {}, -1});
    return true;
  }
  bool close() {
    frames_.pop_back();
    return true;
  }
  // A value begins: its slot (a member's is in the member's bytes) and `bytes` of its own.
  bool next_element(size_t bytes) {
    const bool in_array = !frames_.empty() && !frames_.back().object;
    if (in_array) ++frames_.back().index;
    take(bytes + (in_array ? kArraySlots : frames_.empty() ? kValueSlot : 0));
    return true;
  }
  // The most text a string of `decoded` bytes can have been: 6 bytes (\uXXXX) a byte, and its quotes.
  size_t quoted(size_t decoded) const { return std::min(text_bytes_, 6 * decoded + 2); }
  // A token of `raw` bytes of text, `decoded` of value: the lexer's buffers grow to the longest.
  void token(size_t raw, size_t decoded) {
    const size_t bytes = 2 * (doubled_capacity(raw) + doubled_capacity(decoded));
    if (bytes > token_bytes_) {
      const size_t growth = bytes - token_bytes_;
      token_bytes_ = bytes;
      take(growth);
    }
  }
  void take(size_t bytes) {
    taken_ += bytes;
    if (taken_ > budget_)
      throw InputError("the JSON document would take more memory to hold than the " + gib(budget_) + " available");
  }

  std::vector<Frame> frames_;
  size_t text_bytes_, budget_, taken_ = 0, token_bytes_ = 0;
};

}  // namespace

nlohmann::json parse_json_document(std::string_view text, size_t memory_budget) {
  JsonChecker checker(text, memory_budget);
  nlohmann::json::sax_parse(text.begin(), text.end(), &checker);
  try {
    return nlohmann::json::parse(text.begin(), text.end());  // the checker has refused whatever this parse would
  } catch (const nlohmann::json::exception& e) {
    throw InputError("invalid JSON: " + parse_message(e.what()));
  }
}

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
  // Every number of the format is computed with in float: a larger one would become inf, and a
  // non-zero one that float rounds to 0 is not what the file says.
  const double x = v.get<double>();
  if (!(std::fabs(x) <= std::numeric_limits<float>::max()))
    fail(key, "must be within float's range (magnitude at most 3.4e38), got " + describe_json_value(v));
  if (x != 0 && static_cast<float>(x) == 0)
    fail(key, "is below float's range and would be 0, got " + describe_json_value(v));
  return x;
}

int64_t JsonReader::to_integer(const nlohmann::json& v, const std::string& where, int64_t min_value,
                               int64_t max_value) const {
  const std::string want = min_value == 1   ? "a positive integer"
                           : min_value == 0 ? "a non-negative integer"
                                            : "an integer >= " + std::to_string(min_value);
  if (!v.is_number_integer()) throw InputError(where + ": must be " + want + ", got " + describe_json_value(v));
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
    throw InputError(where + ": " + describe_json_value(v) + " is too large");
  const int64_t x = v.get<int64_t>();
  if (x < min_value) throw InputError(where + ": must be " + want + ", got " + describe_json_value(v));
  if (x > max_value)
    throw InputError(where + ": must be at most " + std::to_string(max_value) + ", got " + describe_json_value(v));
  return x;
}

int64_t JsonReader::integer_or(const std::string& key, int64_t fallback, int64_t min_value, int64_t max_value) {
  if (!has(key)) return fallback;
  return to_integer(get(key), key_path(key), min_value, max_value);
}

std::vector<int64_t> JsonReader::shape(const std::string& key) {
  const auto& v = get(key);
  if (!v.is_array() || v.empty())
    fail(key, "must be a non-empty list of positive integers, got " + describe_json_value(v));
  std::vector<int64_t> out;
  for (size_t i = 0; i < v.size(); ++i)
    out.push_back(to_integer(v[i], key_path(key) + "[" + std::to_string(i) + "]", 1, kMaxDimension));
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
      out.push_back(to_integer(v[i], key_path(key) + "[" + std::to_string(i) + "]", min_value, kMaxDimension));
    return out;
  }
  return std::vector<int64_t>(dims, to_integer(v, key_path(key), min_value, kMaxDimension));
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
  const std::string s = v.dump();
  if (s.size() <= 40) return s;
  // A string's dump holds its characters raw: the cut goes before a whole one, so that a file
  // of valid UTF-8 gives a message of valid UTF-8.
  size_t cut = 37;
  while (cut > 0 && Error::is_continuation(s[cut])) --cut;
  return s.substr(0, cut) + "...";
}

}  // namespace anvil
