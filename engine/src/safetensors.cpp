#include "anvil/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <type_traits>
#include <utility>
#include <vector>

#include "anvil/error.hpp"
#include "anvil/output_file.hpp"
#include "engine/src/run/host_memory.hpp"
#include "engine/src/spec/json_reader.hpp"

// The file format stores little-endian IEEE floats; we copy bytes straight in and out, and memcpy
// other element types from the (possibly unaligned) bytes in host order.
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");
#endif
static_assert(std::numeric_limits<float>::is_iec559 && std::numeric_limits<double>::is_iec559,
              "safetensors I/O assumes IEEE 754 floats");

namespace anvil {

namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit
constexpr const char* kMetadataKey = "__metadata__";

[[noreturn]] void fail(const std::string& path, const std::string& problem) { throw InputError(path + ": " + problem); }

[[noreturn]] void fail_tensor(const std::string& path, const std::string& name, const std::string& problem) {
  fail(path, "tensor '" + name + "': " + problem);
}

uint64_t read_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A JSON value that must be a non-negative integer fitting in int64_t.
// Returns false for anything else; `negative` tells the caller which message to give.
bool get_count(const json& v, int64_t& out, bool& negative) {
  negative = false;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    out = static_cast<int64_t>(u);
    return true;
  }
  negative = v.is_number_integer();  // signed integers reach here only when negative
  return false;
}

// How the elements of a dtype become float32.
enum class Conversion { None, F64, F16, BF16, Skip };

struct Dtype {
  const char* name;
  uint64_t itemsize;
  Conversion conversion;
};

// The dtypes the reader knows: floats become float32; integers and bools are listed in `skipped`.
constexpr Dtype kDtypes[] = {
    {"F32", 4, Conversion::None},  {"F64", 8, Conversion::F64},   {"F16", 2, Conversion::F16},
    {"BF16", 2, Conversion::BF16}, {"BOOL", 1, Conversion::Skip}, {"U8", 1, Conversion::Skip},
    {"I8", 1, Conversion::Skip},   {"U16", 2, Conversion::Skip},  {"I16", 2, Conversion::Skip},
    {"U32", 4, Conversion::Skip},  {"I32", 4, Conversion::Skip},  {"U64", 8, Conversion::Skip},
    {"I64", 8, Conversion::Skip},
};

const Dtype* find_dtype(const std::string& name) {
  for (const Dtype& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

struct Entry {
  std::string name;
  const Dtype* dtype = nullptr;
  Shape shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

Entry parse_entry(const std::string& path, const std::string& name, const json& v, uint64_t data_bytes) {
  Entry e;
  e.name = name;
  if (!v.is_object()) fail_tensor(path, name, "entry is not a JSON object");

  const auto dtype = v.find("dtype");
  if (dtype == v.end() || !dtype->is_string()) fail_tensor(path, name, "dtype is missing or not a string");
  const std::string& dt = dtype->get_ref<const std::string&>();
  e.dtype = find_dtype(dt);
  if (!e.dtype) {
    fail_tensor(path, name,
                "unsupported dtype '" + dt +
                    "' (float tensors must be F16, BF16, F32 or F64; integer and bool tensors are skipped)");
  }
  const uint64_t itemsize = e.dtype->itemsize;

  const auto shape = v.find("shape");
  if (shape == v.end() || !shape->is_array()) fail_tensor(path, name, "shape is missing or not an array");
  for (const json& d : *shape) {
    int64_t dim = 0;
    bool negative = false;
    if (!get_count(d, dim, negative)) {
      const std::string what = negative ? "a negative" : "a non-integer or too large";
      fail_tensor(path, name,
                  "shape has " + what + " dimension " + d.dump(-1, ' ', false, json::error_handler_t::replace));
    }
    e.shape.push_back(dim);
  }

  // Element count, refusing anything whose byte size would not fit in int64_t.
  // A zero dimension makes the tensor empty however large the others are.
  uint64_t n = 1;
  bool empty = false;
  for (int64_t d : e.shape) empty = empty || d == 0;
  if (empty) {
    n = 0;
  } else {
    const uint64_t limit = static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / itemsize;
    for (int64_t d : e.shape) {
      if (n > limit / static_cast<uint64_t>(d))
        fail_tensor(path, name, "shape " + to_string(e.shape) + " has too many elements");
      n *= static_cast<uint64_t>(d);
    }
  }

  const auto offsets = v.find("data_offsets");
  int64_t begin = 0, end = 0;
  bool negative = false;
  if (offsets == v.end() || !offsets->is_array() || offsets->size() != 2 ||
      !get_count((*offsets)[0], begin, negative) || !get_count((*offsets)[1], end, negative)) {
    fail_tensor(path, name, "data_offsets must be an array of two non-negative integers");
  }
  e.begin = static_cast<uint64_t>(begin);
  e.end = static_cast<uint64_t>(end);
  const std::string range = "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "]";
  if (e.begin > e.end) fail_tensor(path, name, range + ": begin is after end");
  if (e.end > data_bytes) {
    fail_tensor(path, name, range + " are out of range: the data region has " + std::to_string(data_bytes) + " bytes");
  }
  if (e.end - e.begin != n * itemsize) {
    fail_tensor(path, name,
                range + " do not match shape " + to_string(e.shape) + " of " + dt + " (" +
                    std::to_string(n * itemsize) + " bytes)");
  }
  return e;
}

// The tensors' byte ranges must tile the data exactly, in any order: no
// overlap, no gap, nothing after the last (the reference implementation's rule).
void require_contiguous(const std::string& path, std::vector<Entry> entries, uint64_t data_bytes) {
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  uint64_t covered = 0;
  for (const Entry& e : entries) {
    if (e.begin < covered) fail_tensor(path, e.name, "data_offsets overlap another tensor's bytes");
    if (e.begin > covered)
      fail_tensor(path, e.name,
                  "data_offsets leave a gap of " + std::to_string(e.begin - covered) + " bytes before it");
    covered = e.end;
  }
  if (covered != data_bytes) fail(path, std::to_string(data_bytes - covered) + " bytes after the last tensor's data");
}

float float_from_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// IEEE binary16: 1 sign, 5 exponent (bias 15) and 10 fraction bits; every value is exact in float32.
float float_from_f16(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t fraction = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: fraction * 2^-24
    const float magnitude = std::ldexp(static_cast<float>(fraction), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 0x1f) return float_from_bits(sign | 0x7f800000u | fraction << 13);  // Inf, or NaN with its payload
  return float_from_bits(sign | (exponent - 15 + 127) << 23 | fraction << 13);
}

// bfloat16 is the upper half of a float32.
float float_from_bf16(uint16_t b) { return float_from_bits(static_cast<uint32_t>(b) << 16); }

// FLT_MAX plus half its ulp: doubles of this magnitude or more round to Inf (a tie goes to the even Inf).
constexpr double kFloatOverflowThreshold = 0x1.ffffffp127;

template <typename Raw>
Raw element_at(const unsigned char* bytes, size_t i) {
  Raw value;
  std::memcpy(&value, bytes + i * sizeof(Raw), sizeof(Raw));
  return value;
}

// Converts the raw elements of an F16, BF16 or F64 tensor. A finite F64 value beyond float32's
// range is an error: it would silently become Inf.
void convert_to_float(const std::string& path, const Entry& e, const unsigned char* bytes, std::vector<float>& out) {
  const Conversion conversion = e.dtype->conversion;
  for (size_t i = 0; i < out.size(); ++i) {
    if (conversion == Conversion::F16) {
      out[i] = float_from_f16(element_at<uint16_t>(bytes, i));
    } else if (conversion == Conversion::BF16) {
      out[i] = float_from_bf16(element_at<uint16_t>(bytes, i));
    } else {
      const double value = element_at<double>(bytes, i);
      if (std::isfinite(value) && std::fabs(value) >= kFloatOverflowThreshold) {
        char text[32];
        std::snprintf(text, sizeof text, "%.17g", value);
        fail_tensor(path, e.name,
                    "F64 value " + std::string(text) + " at index " + std::to_string(i) + " is beyond float32's range");
      }
      out[i] = static_cast<float>(value);  // rounds to nearest
    }
  }
}

// A whole regular file, mapped read-only, so that a large file is paged in as its tensors are
// converted rather than read into a buffer first. The size comes from fstat before mapping and
// every offset is checked against it. A file that another process truncates while it is mapped
// can still raise SIGBUS when a page past its new end is touched; that is out of scope (anvil's
// own writer replaces a file by renaming a new one over it, which leaves a mapped file intact).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    check_path_text(path);
    // O_NONBLOCK: opening a FIFO must not wait for a writer (map() refuses it).
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
    try {
      map(path, fd);
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(fd);  // the mapping keeps the file
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<unsigned char*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  void map(const std::string& path, int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) fail(path, std::string("cannot stat: ") + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) fail(path, "cannot read: it is a directory");
    if (!S_ISREG(st.st_mode)) fail(path, "cannot read: not a regular file");
    size_ = static_cast<size_t>(st.st_size);
    if (size_ == 0) return;  // mmap refuses a length of 0
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) throw Error(path + ": cannot map the file: " + std::strerror(errno));
    data_ = static_cast<const unsigned char*>(p);
  }

  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
};

std::map<std::string, std::string> parse_metadata(const std::string& path, const json& v) {
  if (!v.is_object()) fail(path, "__metadata__ is not a JSON object");
  std::map<std::string, std::string> out;
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it->is_string()) fail(path, "__metadata__ value for '" + it.key() + "' is not a string");
    out[it.key()] = it->get<std::string>();
  }
  return out;
}

}  // namespace

TensorFile read_safetensors(const std::string& path) {
  const MappedFile file(path);
  const uint64_t file_bytes = file.size();
  if (file_bytes < 8) {
    fail(path, "file is too short (" + std::to_string(file_bytes) + " bytes) to hold the 8-byte header length");
  }
  const uint64_t header_bytes = read_le64(file.data());
  if (header_bytes > kMaxHeaderBytes) {
    fail(path, "header length " + std::to_string(header_bytes) + " is larger than the " +
                   std::to_string(kMaxHeaderBytes) + "-byte limit");
  }
  if (header_bytes > file_bytes - 8) {
    fail(path, "header length " + std::to_string(header_bytes) + " runs past the end of the file (" +
                   std::to_string(file_bytes) + " bytes)");
  }
  const uint64_t data_start = 8 + header_bytes;
  const uint64_t data_bytes = file_bytes - data_start;

  const std::string_view header(reinterpret_cast<const char*>(file.data()) + 8, static_cast<size_t>(header_bytes));
  // As the reference implementation: UTF-8 JSON without a byte-order mark,
  // followed by JSON whitespace at most (writers pad with spaces), each key once.
  if (header.compare(0, 3, "\xEF\xBB\xBF") == 0) fail(path, "header starts with a byte-order mark");
  // nlohmann's lexer reads a NUL byte as the end of the input: what follows would go unchecked.
  if (const size_t nul = header.find('\0'); nul != std::string_view::npos)
    fail(path, "header has bytes after its JSON object: a NUL byte at offset " + std::to_string(nul) +
                   ", where a JSON reader stops");
  json root;
  try {
    root = parse_json_document(header, parse_memory_budget());
  } catch (const InputError& e) {
    const std::string why = e.what();
    fail(path, why.rfind("invalid JSON: ", 0) == 0 ? "header is not valid JSON: " + why.substr(14) : "header: " + why);
  }
  if (!root.is_object()) fail(path, "header is not a JSON object");
  if (header[header.find_last_not_of(" \t\n\r")] != '}')
    fail(path, "header has bytes after its JSON object (only whitespace may follow)");

  // Validate every entry before reading any data, so a bad file costs no large allocations.
  TensorFile result;
  std::vector<Entry> entries;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == kMetadataKey) {
      result.metadata = parse_metadata(path, it.value());
    } else {
      entries.push_back(parse_entry(path, it.key(), it.value(), data_bytes));
    }
  }

  require_contiguous(path, entries, data_bytes);
  // The tensors become float32 in host memory: refuse a file (a sparse one costs no disk) whose
  // tensors would not fit, rather than be ended by the kernel's out-of-memory killer.
  size_t float_bytes = 0;
  for (const Entry& e : entries)
    if (e.dtype->conversion != Conversion::Skip) float_bytes += static_cast<size_t>(numel(e.shape)) * sizeof(float);
  if (const auto why = beyond_host_memory(float_bytes)) fail(path, "its tensors take " + *why + " as float32");
  for (const Entry& e : entries) {
    if (e.dtype->conversion == Conversion::Skip) {
      result.skipped.emplace(e.name, e.dtype->name);
      continue;
    }
    // Within the mapping: require_contiguous checked every range against the file's size.
    const unsigned char* bytes = file.data() + data_start + e.begin;
    HostTensor t(e.shape);
    if (e.dtype->conversion == Conversion::None) {
      if (!t.data.empty()) std::memcpy(t.data.data(), bytes, static_cast<size_t>(e.end - e.begin));
    } else {
      convert_to_float(path, e, bytes, t.data);
    }
    result.tensors.emplace(e.name, std::move(t));
  }
  return result;
}

namespace {

// The bytes of a float32 tensor of this shape (no dimension negative), or -1 where they pass
// int64_t: a plain product would wrap around 64 bits to a small size (2^62 elements, 0 bytes).
int64_t float32_bytes(const Shape& shape) {
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;  // empty, however large the rest
  int64_t bytes = sizeof(float);
  for (int64_t d : shape)
    if (__builtin_mul_overflow(bytes, d, &bytes)) return -1;
  return bytes;
}

// The padded header of a file holding tensors of these names and element
// counts (in name order: the data follows in it) and this metadata. Throws
// where it cannot be encoded, or would exceed what readers take: data_offsets
// past int64_t, which no reader (anvil's included) accepts. The names, shapes
// and metadata are the caller's (in the CLI, a network's), so each refusal is
// an input error, exit 2 in the CLI.
std::string encode_header(const std::string& path, const std::map<std::string, Shape>& shapes,
                          const std::map<std::string, std::string>& metadata) {
  json header = json::object();  // std::map-backed, so keys come out sorted
  int64_t offset = 0;
  for (const auto& [name, shape] : shapes) {
    if (name == kMetadataKey) throw InputError(path + ": cannot write a tensor named '__metadata__'");
    // The message's start, outside the lambda: C++17 does not let a lambda capture structured bindings.
    const std::string what = path + ": cannot write tensor '" + name + "': shape " + to_string(shape);
    auto refuse = [&what](const std::string& why) { return InputError(what + why); };
    if (std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d < 0; }))
      throw refuse(" has a negative dimension");
    const int64_t bytes = float32_bytes(shape);
    if (bytes < 0) throw refuse(" is too large: its float32 data would take 2^63 bytes or more");
    int64_t end = 0;
    if (__builtin_add_overflow(offset, bytes, &end))
      throw refuse(" is too large: with the tensors before it, the data would take 2^63 bytes or more");
    header[name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  if (!metadata.empty()) header[kMetadataKey] = metadata;

  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {  // e.g. a name that is not valid UTF-8
    throw InputError(path + ": cannot encode the header: " + e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // pad as the reference implementation does
  // No reader, anvil's included, would take the file.
  if (text.size() > kMaxHeaderBytes)
    throw InputError(path + ": cannot write: the header (tensor names and metadata) would take " +
                     std::to_string(text.size()) + " bytes, beyond the " + std::to_string(kMaxHeaderBytes) +
                     "-byte limit of safetensors readers");
  return text;
}

}  // namespace

void check_safetensors_header(const std::string& path, const std::map<std::string, Shape>& shapes,
                              const std::map<std::string, std::string>& metadata) {
  encode_header(path, shapes, metadata);
}

void write_safetensors(const std::string& path, const TensorFile& file) {
  // Build the header first: a bad tensor must not create any file.
  std::map<std::string, Shape> shapes;
  for (const auto& [name, t] : file.tensors) {
    if (!holds_shape(t))
      throw InputError(path + ": tensor '" + name + "' has " + std::to_string(t.data.size()) + " values but shape " +
                       to_string(t.shape));
    shapes.emplace(name, t.shape);
  }
  const std::string text = encode_header(path, shapes, file.metadata);
  unsigned char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(static_cast<uint64_t>(text.size()) >> (8 * i));

  write_output_file(path, [&](std::FILE* f) {
    bool ok = std::fwrite(len_bytes, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
    for (auto it = file.tensors.begin(); ok && it != file.tensors.end(); ++it) {
      const std::vector<float>& d = it->second.data;
      ok = d.empty() || std::fwrite(d.data(), sizeof(float), d.size(), f) == d.size();  // empty data() may be null
    }
    return ok;
  });
}

const HostTensor& require_tensor(const TensorFile& file, const std::string& path, const std::string& name,
                                 const Shape& expected) {
  const auto it = file.tensors.find(name);
  const auto skipped = file.skipped.find(name);
  if (skipped != file.skipped.end()) {
    fail_tensor(path, name, "dtype " + skipped->second + " cannot be loaded (only F16, BF16, F32 and F64 can)");
  }
  if (it == file.tensors.end()) fail(path, "no tensor named '" + name + "'");
  if (it->second.shape != expected) {
    fail(path, "tensor '" + name + "' has shape " + to_string(it->second.shape) + ", expected " + to_string(expected));
  }
  if (!holds_shape(it->second))  // only a TensorFile built in memory can differ
    fail(path, "tensor '" + name + "' has " + std::to_string(it->second.data.size()) + " values for shape " +
                   to_string(it->second.shape));
  return it->second;
}

namespace {

// select_parameters of a file that is copied from (const) or moved from.
template <class File>
ParameterSelection select_from(File&& file, const std::string& path,
                               const std::map<std::string, Shape>& parameter_shapes, bool strict) {
  ParameterSelection selection;
  for (const auto& [name, shape] : parameter_shapes) {
    require_tensor(file, path, name, shape);
    if constexpr (std::is_const_v<std::remove_reference_t<File>>)
      selection.parameters.emplace(name, file.tensors.at(name));
    else
      selection.parameters.emplace(name, std::move(file.tensors.at(name)));
  }
  for (const auto& entry : file.tensors)
    if (!parameter_shapes.count(entry.first)) selection.unused.push_back(entry.first);
  for (const auto& entry : file.skipped)
    if (!parameter_shapes.count(entry.first)) selection.unused.push_back(entry.first);
  std::sort(selection.unused.begin(), selection.unused.end());
  if (strict && !selection.unused.empty())
    throw InputError(unused_tensors_message(path, selection.unused) + " (--strict)");
  return selection;
}

}  // namespace

ParameterSelection select_parameters(const TensorFile& file, const std::string& path,
                                     const std::map<std::string, Shape>& parameter_shapes, bool strict) {
  return select_from(file, path, parameter_shapes, strict);
}

ParameterSelection select_parameters(TensorFile&& file, const std::string& path,
                                     const std::map<std::string, Shape>& parameter_shapes, bool strict) {
  return select_from(std::move(file), path, parameter_shapes, strict);
}

// A warning as well as an error: one line, as anvil::Error makes its messages.
std::string unused_tensors_message(const std::string& path, const std::vector<std::string>& unused) {
  std::string list;
  for (const std::string& name : unused) list += (list.empty() ? "" : ", ") + name;
  const bool one = unused.size() == 1;
  return Error::one_line(path + ": " + std::to_string(unused.size()) +
                         (one ? " tensor is not a parameter" : " tensors are not parameters") +
                         " of this network: " + list);
}

}  // namespace anvil
