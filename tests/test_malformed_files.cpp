// A collection of malformed tensor and dataset files, one per way such a file
// can be wrong, each built byte by byte from a well-formed dataset for
// tests/data/dataset_epochs.json (input [S, 2, 6, 6], target [S, 3, 3, 3]).
// Dataset::load must refuse every one, and read_safetensors every one whose
// file itself is wrong, with an InputError of one line that starts with the
// file, names the tensor where there is one, and says the problem. A subset
// goes through `anvil train --data` and `anvil eval --data`: exit code 2 and
// that same line, alone, on stderr. Nothing may crash, abort or throw anything
// else. (The exact wording of each rule is tested beside the rule, in
// test_safetensors.cpp and test_dataset.cpp.)
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "anvil/dataset.hpp"
#include "anvil/error.hpp"
#include "anvil/network.hpp"
#include "anvil/safetensors.hpp"
#include "tests/cli_run.hpp"
#include "tests/temp_dir_test.hpp"
#include "tests/test_support.hpp"

namespace anvil::testing {
namespace {

const std::string kNet = data_path("dataset_epochs.json");
const Shape kSample = {2, 6, 6}, kTargetSample = {3, 3, 3};

// Little-endian bytes of an integer, built by shifting so the test does not rely on host byte order.
std::string le_bytes(uint64_t v, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

uint64_t bits_of(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}

// The bit patterns used below: 0.5 in each float dtype, and the specials.
constexpr uint64_t kHalfF32 = 0x3f000000, kHalfF16 = 0x3800, kHalfBF16 = 0x3f00;
constexpr uint64_t kNanF32 = 0x7fc00000, kInfF32 = 0x7f800000, kMinusInfF16 = 0xfc00, kNanBF16 = 0x7fc0;
const uint64_t kHalfF64 = bits_of(0.5);

// `n` elements of `itemsize` bytes, each `fill` except element `at`, which is `special`.
std::string elements(size_t n, int itemsize, uint64_t fill, size_t at = SIZE_MAX, uint64_t special = 0) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += le_bytes(i == at ? special : fill, itemsize);
  return s;
}
std::string f32(size_t n, size_t at = SIZE_MAX, uint64_t special = 0) { return elements(n, 4, kHalfF32, at, special); }

// One tensor of a file: its key (JSON text inside the quotes, escapes allowed), its entry's dtype
// and shape (JSON text) and its data. data_offsets (JSON text) say where the data lies unless given.
struct Tensor {
  std::string key, dtype, shape, bytes, offsets;
};

const size_t kInputFloats = 2 * 72, kTargetFloats = 2 * 27;  // two samples
Tensor input(std::string bytes = f32(kInputFloats)) { return {"input", R"("F32")", "[2, 2, 6, 6]", bytes, ""}; }
Tensor target(std::string bytes = f32(kTargetFloats)) { return {"target", R"("F32")", "[2, 3, 3, 3]", bytes, ""}; }
Tensor with(Tensor t, const std::string& dtype, const std::string& shape, const std::string& bytes) {
  t.dtype = dtype;
  t.shape = shape;
  t.bytes = bytes;
  return t;
}
Tensor named(Tensor t, const std::string& key) {
  t.key = key;
  return t;
}
Tensor at_offsets(Tensor t, const std::string& offsets) {
  t.offsets = offsets;
  return t;
}

// The header (`more`: further top-level entries, JSON text) and the data, in the tensors' order.
std::string header_of(const std::vector<Tensor>& tensors, const std::string& more = "") {
  std::string header, entries;
  size_t offset = 0;
  for (const Tensor& t : tensors) {
    const std::string offsets =
        t.offsets.empty() ? "[" + std::to_string(offset) + ", " + std::to_string(offset + t.bytes.size()) + "]"
                          : t.offsets;
    offset += t.bytes.size();
    entries += (entries.empty() ? "" : ", ") + ("\"" + t.key + "\": {\"dtype\": " + t.dtype +
                                                ", \"shape\": " + t.shape + ", \"data_offsets\": " + offsets + "}");
  }
  if (!more.empty()) entries += (entries.empty() ? "" : ", ") + more;
  return "{" + entries + "}";
}
std::string data_of(const std::vector<Tensor>& tensors) {
  std::string data;
  for (const Tensor& t : tensors) data += t.bytes;
  return data;
}
// A whole file: the 8-byte header length, the header, the data.
std::string file_of(const std::string& header, const std::string& data) {
  return le_bytes(header.size(), 8) + header + data;
}
std::string file_of(const std::vector<Tensor>& tensors, const std::string& more = "") {
  return file_of(header_of(tensors, more), data_of(tensors));
}

const std::vector<Tensor> kGood = {input(), target()};
const std::string kGoodHeader = header_of(kGood);
const std::string kGoodData = data_of(kGood);

// Is the file itself wrong (read_safetensors refuses it), or only as a dataset (Dataset::load does)?
enum class Level { File, Dataset };

struct Malformed {
  std::string what;   // the mistake
  std::string bytes;  // the whole file
  Level level;
  std::string tensor;   // the tensor the message must name ('' quoted, or as a JSON path); "" for none
  std::string problem;  // a part of the message that says what is wrong
  bool cli;             // also run through `anvil train --data` and `anvil eval --data`
};

const std::vector<Malformed> kMalformed = {
    // Framing: the 8-byte header length
    {"an empty file", "", Level::File, "", "file is too short (0 bytes)", true},
    {"a 7-byte file", file_of(kGoodHeader, kGoodData).substr(0, 7), Level::File, "", "file is too short (7 bytes)",
     true},
    {"a header length beyond the file", le_bytes(1000, 8) + "{}", Level::File, "",
     "header length 1000 runs past the end of the file (10 bytes)", true},
    {"a header length over 100 MB", le_bytes(100'000'001, 8) + kGoodHeader + kGoodData, Level::File, "",
     "header length 100000001 is larger than the 100000000-byte limit", false},
    {"a header length of 2^64 - 1", le_bytes(UINT64_MAX, 8) + kGoodHeader + kGoodData, Level::File, "",
     "is larger than the 100000000-byte limit", false},
    {"a header length of zero", le_bytes(0, 8) + kGoodHeader + kGoodData, Level::File, "", "header is not valid JSON",
     true},
    {"a header length one short, cutting the JSON", le_bytes(kGoodHeader.size() - 1, 8) + kGoodHeader + kGoodData,
     Level::File, "", "header is not valid JSON", false},
    {"a header length one long, taking a byte of data", le_bytes(kGoodHeader.size() + 1, 8) + kGoodHeader + kGoodData,
     Level::File, "", "header has bytes after its JSON object", false},
    {"a header length of 3, a fragment of the JSON", le_bytes(3, 8) + kGoodHeader + kGoodData, Level::File, "",
     "header is not valid JSON", false},
    // The header's JSON
    {"a header that is not JSON", file_of("safetensors!", kGoodData), Level::File, "", "header is not valid JSON",
     true},
    {"a header of spaces only", file_of(std::string(16, ' '), ""), Level::File, "", "header is not valid JSON", false},
    {"a header that is a list", file_of("[1, 2]", ""), Level::File, "", "header is not a JSON object", false},
    {"a header that is a string", file_of(R"("input")", ""), Level::File, "", "header is not a JSON object", false},
    {"a truncated header", file_of(kGoodHeader.substr(0, kGoodHeader.size() / 2), kGoodData), Level::File, "",
     "header is not valid JSON", true},
    {"a byte-order mark", file_of("\xEF\xBB\xBF" + kGoodHeader, kGoodData), Level::File, "",
     "header starts with a byte-order mark", true},
    {"a NUL after the JSON", file_of(kGoodHeader + std::string(1, '\0'), kGoodData), Level::File, "",
     "header has bytes after its JSON object", true},
    {"a letter after the JSON", file_of(kGoodHeader + " x", kGoodData), Level::File, "", "header is not valid JSON",
     false},
    {"a second object after the JSON", file_of(kGoodHeader + "{}", kGoodData), Level::File, "",
     "header is not valid JSON", false},
    {"a raw control byte in a name", file_of(header_of({input(), target()}).replace(2, 0, "\x01"), kGoodData),
     Level::File, "", "header is not valid JSON", false},
    {"invalid UTF-8 in a name", file_of(header_of({input(), target()}).replace(2, 0, "\xC3\x28"), kGoodData),
     Level::File, "", "header is not valid JSON", false},
    {"nesting 200 deep", file_of(kGood, R"("__metadata__": )" + std::string(200, '[') + std::string(200, ']')),
     Level::File, "", "header is not valid JSON: nested more than 128 levels deep", true},
    {"a number beyond double", file_of({with(input(), R"("F32")", "[2, 1e400, 6, 6]", f32(kInputFloats)), target()}),
     Level::File, "input.shape", "number out of range", false},
    {"a tensor given twice", file_of({input(), input(), target()}), Level::File, "input",
     "header: input: duplicate key", true},
    {"a field given twice",
     file_of({with(input(), R"("F32", "dtype": "F16")", "[2, 2, 6, 6]", f32(kInputFloats)), target()}), Level::File,
     "input", "header: input.dtype: duplicate key", false},
    {"__metadata__ given twice", file_of(kGood, R"("__metadata__": {}, "__metadata__": {})"), Level::File, "",
     "header: __metadata__: duplicate key", false},
    // __metadata__
    {"__metadata__ that is a list", file_of(kGood, R"("__metadata__": ["epochs", "3"])"), Level::File, "",
     "__metadata__ is not a JSON object", false},
    {"__metadata__ that is a string", file_of(kGood, R"("__metadata__": "v1")"), Level::File, "",
     "__metadata__ is not a JSON object", false},
    {"a number in __metadata__", file_of(kGood, R"("__metadata__": {"epochs": 3})"), Level::File, "",
     "__metadata__ value for 'epochs' is not a string", true},
    {"an object in __metadata__", file_of(kGood, R"("__metadata__": {"note": {"a": "b"}})"), Level::File, "",
     "__metadata__ value for 'note' is not a string", false},
    // An entry's dtype
    {"an entry that is not an object", file_of(R"({"input": [0, 576]})", kGoodData), Level::File, "'input'",
     "entry is not a JSON object", false},
    {"no dtype", file_of(R"({"input": {"shape": [2, 2, 6, 6], "data_offsets": [0, 576]}})", f32(kInputFloats)),
     Level::File, "'input'", "dtype is missing or not a string", false},
    {"a dtype that is a number", file_of({with(input(), "32", "[2, 2, 6, 6]", f32(kInputFloats)), target()}),
     Level::File, "'input'", "dtype is missing or not a string", false},
    {"an unknown dtype", file_of({input(), with(target(), R"("F31")", "[2, 3, 3, 3]", f32(kTargetFloats))}),
     Level::File, "'target'", "unsupported dtype 'F31'", true},
    {"a lower-case dtype", file_of({with(input(), R"("f32")", "[2, 2, 6, 6]", f32(kInputFloats)), target()}),
     Level::File, "'input'", "unsupported dtype 'f32'", false},
    // An entry's shape
    {"no shape", file_of(R"({"input": {"dtype": "F32", "data_offsets": [0, 576]}})", f32(kInputFloats)), Level::File,
     "'input'", "shape is missing or not an array", false},
    {"a shape that is a number", file_of({with(input(), R"("F32")", "144", f32(kInputFloats)), target()}), Level::File,
     "'input'", "shape is missing or not an array", false},
    {"a negative dimension", file_of({with(input(), R"("F32")", "[2, -2, 6, 6]", f32(kInputFloats)), target()}),
     Level::File, "'input'", "shape has a negative dimension -2", true},
    {"a fractional dimension", file_of({with(input(), R"("F32")", "[2, 2.5, 6, 6]", f32(kInputFloats)), target()}),
     Level::File, "'input'", "shape has a non-integer or too large dimension 2.5", false},
    {"a dimension that is a string",
     file_of({with(input(), R"("F32")", R"([2, "2", 6, 6])", f32(kInputFloats)), target()}), Level::File, "'input'",
     "shape has a non-integer or too large dimension \"2\"", false},
    {"a dimension of 2^63",
     file_of({with(input(), R"("F32")", "[2, 9223372036854775808, 6, 6]", f32(kInputFloats)), target()}), Level::File,
     "'input'", "shape has a non-integer or too large dimension 9223372036854775808", false},
    {"an element count beyond 2^64",
     file_of({with(input(), R"("F32")", "[4294967296, 4294967296, 6, 6]", f32(kInputFloats)), target()}), Level::File,
     "'input'", "shape (4294967296, 4294967296, 6, 6) has too many elements", true},
    {"a byte count beyond 2^63",
     file_of({with(input(), R"("F32")", "[2305843009213693952]", f32(kInputFloats)), target()}), Level::File, "'input'",
     "shape (2305843009213693952) has too many elements", false},
    // An entry's data_offsets
    {"no data_offsets", file_of(R"({"input": {"dtype": "F32", "shape": [2, 2, 6, 6]}})", f32(kInputFloats)),
     Level::File, "'input'", "data_offsets must be an array of two non-negative integers", false},
    {"data_offsets of one number", file_of({at_offsets(input(), "[0]"), target()}), Level::File, "'input'",
     "data_offsets must be an array of two non-negative integers", false},
    {"data_offsets of three numbers", file_of({at_offsets(input(), "[0, 576, 792]"), target()}), Level::File, "'input'",
     "data_offsets must be an array of two non-negative integers", false},
    {"negative data_offsets", file_of({input(), at_offsets(target(), "[-216, 0]")}), Level::File, "'target'",
     "data_offsets must be an array of two non-negative integers", false},
    {"fractional data_offsets", file_of({at_offsets(input(), "[0.0, 576.0]"), target()}), Level::File, "'input'",
     "data_offsets must be an array of two non-negative integers", false},
    {"data_offsets beyond 2^63",
     file_of({input(), at_offsets(target(), "[18446744073709551000, 18446744073709551216]")}), Level::File, "'target'",
     "data_offsets must be an array of two non-negative integers", false},
    {"reversed data_offsets", file_of({at_offsets(input(), "[576, 0]"), target()}), Level::File, "'input'",
     "data_offsets [576, 0]: begin is after end", true},
    {"data_offsets beyond the file", file_of({input(), at_offsets(target(), "[576, 1000]")}), Level::File, "'target'",
     "data_offsets [576, 1000] are out of range: the data region has 792 bytes", true},
    {"overlapping data_offsets", file_of({input(), at_offsets(target(), "[572, 788]")}) + "0123", Level::File,
     "'target'", "data_offsets overlap another tensor's bytes", true},
    {"a gap between the tensors", file_of({input(), at_offsets(target(), "[580, 796]")}) + "0123", Level::File,
     "'target'", "data_offsets leave a gap of 4 bytes before it", true},
    {"trailing bytes after the data", file_of(kGood) + "0123", Level::File, "", "4 bytes after the last tensor's data",
     true},
    {"data that no tensor covers", file_of(header_of({input()}), kGoodData), Level::File, "",
     "216 bytes after the last tensor's data", false},
    {"data_offsets that do not match the dtype",
     file_of({with(input(), R"("F16")", "[2, 2, 6, 6]", f32(kInputFloats)), target()}), Level::File, "'input'",
     "data_offsets [0, 576] do not match shape (2, 2, 6, 6) of F16 (288 bytes)", true},
    {"data_offsets that do not match the shape",
     file_of({with(input(), R"("F32")", "[3, 2, 6, 6]", f32(kInputFloats)), target()}), Level::File, "'input'",
     "data_offsets [0, 576] do not match shape (3, 2, 6, 6) of F32 (864 bytes)", false},
    // Names with control bytes: the message escapes them and stays one line
    {"a name with an escaped control byte",
     file_of({named(with(input(), R"("F31")", "[2, 2, 6, 6]", f32(kInputFloats)), "in\\u0001put"), target()}),
     Level::File, "'in\\x01put'", "unsupported dtype 'F31'", true},
    {"a name with an escaped newline", file_of({named(at_offsets(input(), "[576, 0]"), "in\\nput"), target()}),
     Level::File, "'in\\nput'", "begin is after end", true},
    // Values out of float32's range
    {"an F64 value beyond float32",
     file_of(
         {with(input(), R"("F64")", "[2, 2, 6, 6]", elements(kInputFloats, 8, kHalfF64, 3, bits_of(1e300))), target()}),
     Level::File, "'input'", "F64 value 1.0000000000000001e+300 at index 3 is beyond float32's range", true},
    {"a negative F64 value beyond float32",
     file_of({input(),
              with(target(), R"("F64")", "[2, 3, 3, 3]", elements(kTargetFloats, 8, kHalfF64, 53, bits_of(-1e39)))}),
     Level::File, "'target'", "F64 value -9.9999999999999994e+38 at index 53 is beyond float32's range", false},
    // Files that are fine as tensor files but not as datasets
    {"no tensors at all", file_of("{}", ""), Level::Dataset, "'input'", "no tensor named 'input'", true},
    {"no input", file_of({target()}), Level::Dataset, "'input'", "no tensor named 'input'", false},
    {"no target", file_of({input()}), Level::Dataset, "'target'", "no tensor named 'target'", true},
    {"an input named Input", file_of({named(input(), "Input"), target()}), Level::Dataset, "'input'",
     "no tensor named 'input'", false},
    {"an input named input\\0", file_of({named(input(), "input\\u0000"), target()}), Level::Dataset, "'input'",
     "no tensor named 'input'", false},
    {"an integer input", file_of({with(input(), R"("I32")", "[2, 2, 6, 6]", f32(kInputFloats)), target()}),
     Level::Dataset, "'input'", "has dtype I32; a dataset holds F16, BF16, F32 or F64 floats", true},
    {"a bool target", file_of({input(), with(target(), R"("BOOL")", "[2, 3, 3, 3]", std::string(54, '\1'))}),
     Level::Dataset, "'target'", "has dtype BOOL; a dataset holds F16, BF16, F32 or F64 floats", false},
    {"no sample dimension", file_of({with(input(), R"("F32")", "[]", f32(1)), target()}), Level::Dataset, "'input'",
     "is a scalar; its first dimension must count the samples", true},
    {"zero samples",
     file_of({with(input(), R"("F32")", "[0, 2, 6, 6]", ""), with(target(), R"("F32")", "[0, 3, 3, 3]", "")}),
     Level::Dataset, "'input'", "holds no samples", true},
    {"sample counts that differ", file_of({input(), with(target(), R"("F32")", "[3, 3, 3, 3]", f32(81))}),
     Level::Dataset, "'input'", "tensor 'input' holds 2 samples and 'target' 3", true},
    {"an input sample shape that is not the network's",
     file_of({with(input(), R"("F32")", "[2, 6, 6, 2]", f32(kInputFloats)), target()}), Level::Dataset, "'input'",
     "has sample shape (6, 6, 2), the network takes (2, 6, 6)", true},
    {"a one-dimensional input", file_of({with(input(), R"("F32")", "[144]", f32(kInputFloats)), target()}),
     Level::Dataset, "'input'", "has sample shape (), the network takes (2, 6, 6)", false},
    {"a target sample shape that is not the network's",
     file_of({input(), with(target(), R"("F32")", "[2, 27]", f32(kTargetFloats))}), Level::Dataset, "'target'",
     "has sample shape (27), the network outputs (3, 3, 3)", false},
    // Non-finite values: a dataset refuses them (a weights file may hold them)
    {"a NaN in the input", file_of({input(f32(kInputFloats, 77, kNanF32)), target()}), Level::Dataset, "'input'",
     "holds NaN at index 77 (sample 1); a dataset must hold finite values", true},
    {"an Inf in the target", file_of({input(), target(f32(kTargetFloats, 26, kInfF32))}), Level::Dataset, "'target'",
     "holds Inf at index 26 (sample 0)", true},
    {"a -Inf in an F16 input",
     file_of(
         {with(input(), R"("F16")", "[2, 2, 6, 6]", elements(kInputFloats, 2, kHalfF16, 100, kMinusInfF16)), target()}),
     Level::Dataset, "'input'", "holds -Inf at index 100 (sample 1)", false},
    {"a NaN in a BF16 target",
     file_of(
         {input(), with(target(), R"("BF16")", "[2, 3, 3, 3]", elements(kTargetFloats, 2, kHalfBF16, 3, kNanBF16))}),
     Level::Dataset, "'target'", "holds NaN at index 3 (sample 0)", false},
    {"an Inf in an F64 input",
     file_of({with(input(), R"("F64")", "[2, 2, 6, 6]", elements(kInputFloats, 8, kHalfF64, 0, bits_of(HUGE_VAL))),
              target()}),
     Level::Dataset, "'input'", "holds Inf at index 0 (sample 0)", false},
};

class MalformedFiles : public TempDirTest {
 protected:
  std::string write(const std::string& bytes) const {
    const std::string p = path("bad.safetensors");
    std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
    return p;
  }

  // The InputError's message of `action`, checked to be one line naming `file`; "" after a failure.
  static std::string refusal(const std::function<void()>& action, const std::string& file) {
    try {
      action();
      ADD_FAILURE() << "accepted";
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(file + ": ", 0), 0u) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      return msg;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not an InputError: " << e.what();
    }
    return "";
  }

  static void load(const std::string& file) { Dataset::load(file, kSample, kTargetSample); }
};

// The files above differ from this one in one way each, so each is refused for its own reason.
TEST_F(MalformedFiles, TheWellFormedDatasetLoads) {
  const std::string p = write(file_of(kGood));
  const Dataset data = Dataset::load(p, kSample, kTargetSample);
  EXPECT_EQ(data.size(), 2);
  EXPECT_EQ(data.inputs().data, std::vector<float>(kInputFloats, 0.5f));
  EXPECT_EQ(data.targets().data, std::vector<float>(kTargetFloats, 0.5f));
  EXPECT_NE(kGoodHeader.size() % 8, 0u) << "the format does not ask for a padded header: keep this one unpadded";
  const CliResult r = run_cli("eval " + quote(kNet) + " --device cpu --batch 2 --data " + quote(p), path(".stderr"));
  EXPECT_EQ(r.status, 0) << describe(r);
}

TEST_F(MalformedFiles, EveryOneIsRefusedInOneLineNamingTheFileAndTheTensor) {
  ASSERT_GE(kMalformed.size(), 75u);
  for (const Malformed& m : kMalformed) {
    SCOPED_TRACE(m.what);
    const std::string p = write(m.bytes);
    const std::string msg = refusal([&] { load(p); }, p);
    EXPECT_NE(msg.find(m.problem), std::string::npos) << "expected '" << m.problem << "' in: " << msg;
    if (!m.tensor.empty()) {
      EXPECT_NE(msg.find(m.tensor), std::string::npos) << "expected " << m.tensor << " in: " << msg;
    }
    if (m.level == Level::File) {
      EXPECT_EQ(refusal([&] { read_safetensors(p); }, p), msg);
    } else {
      EXPECT_NO_THROW(read_safetensors(p));
    }
  }
}

// The CLI says the library's message, alone, and exits with 2 (bad input).
TEST_F(MalformedFiles, TheCliRefusesThemInOneLineWithExitCodeTwo) {
  int runs = 0;
  for (const Malformed& m : kMalformed) {
    if (!m.cli) continue;
    SCOPED_TRACE(m.what);
    const std::string p = write(m.bytes);
    const std::string msg = refusal([&] { load(p); }, p);
    for (const std::string& command : {"train " + quote(kNet) + " --device cpu --epochs 1 --batch 2 --data " + quote(p),
                                       "eval " + quote(kNet) + " --device cpu --batch 2 --data " + quote(p)}) {
      const CliResult r = run_cli(command, path(".stderr"));
      EXPECT_EQ(r.status, 2) << describe(r);
      EXPECT_EQ(r.err, "anvil: error: " + msg + "\n") << describe(r);
      ++runs;
    }
  }
  EXPECT_GE(runs, 2 * 30);
}

// Only regular files are read: a directory or a FIFO is refused at once (a FIFO without waiting
// for a writer), in the library and in the CLI.
TEST_F(MalformedFiles, DirectoriesAndFifosAreRefused) {
  const std::string fifo = path("fifo.safetensors");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (const auto& refused :
       {std::pair{dir_, "cannot read: it is a directory"}, std::pair{fifo, "cannot read: not a regular file"}}) {
    const std::string& file = refused.first;  // a lambda cannot capture a structured binding in C++17
    const std::string problem = refused.second;
    SCOPED_TRACE(file);
    EXPECT_EQ(refusal([&] { read_safetensors(file); }, file), file + ": " + problem);
    EXPECT_EQ(refusal([&] { load(file); }, file), file + ": " + problem);
    const CliResult r = run_cli("eval " + quote(kNet) + " --device cpu --data " + quote(file), path(".stderr"));
    EXPECT_EQ(r.status, 2) << describe(r);
    EXPECT_EQ(r.err, "anvil: error: " + file + ": " + problem + "\n") << describe(r);
  }
}

}  // namespace
}  // namespace anvil::testing
