// Tests for safetensors reading and writing. Files written byte by byte here
// check the reader against the format itself, not just against our writer.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "anvil/error.hpp"
#include "anvil/safetensors.hpp"
#include "tests/temp_dir_test.hpp"

namespace {

namespace fs = std::filesystem;
using anvil::HostTensor;
using anvil::TensorFile;
using anvil::testing::read_bytes;

// Little-endian bytes of an integer, built by shifting so the test does not rely on host byte order.
std::string le_bytes(uint64_t v, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A file in the exact format: 8-byte LE header length, the JSON header, the data.
std::string make_file(const std::string& header, const std::string& data) {
  return le_bytes(header.size(), 8) + header + data;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("anvil_safetensors_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  std::string write_raw(const std::string& name, const std::string& bytes) const {
    const std::string p = path(name);
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }

  // Any leftover temporary file of write_output_file in the test directory.
  bool has_temp_files() const {
    for (const auto& entry : fs::directory_iterator(dir_)) {
      if (entry.path().filename().string().rfind(".anvil-", 0) == 0) return true;  // write_output_file's temporaries
    }
    return false;
  }

  // Reads a malformed file and checks the InputError: one line, naming the file and the problem.
  void expect_input_error(const std::string& bytes, const std::string& problem) const {
    const std::string p = write_raw("bad.safetensors", bytes);
    try {
      anvil::read_safetensors(p);
      ADD_FAILURE() << "no error for a file whose problem should be: " << problem;
    } catch (const anvil::InputError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
      EXPECT_NE(msg.find(problem), std::string::npos) << "expected '" << problem << "' in: " << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }

  fs::path dir_;
};

TEST_F(Safetensors, RoundTripsOddShapesBitExactly) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> dist(0.0f, 10.0f);
  TensorFile file;
  for (const anvil::Shape& shape : {anvil::Shape{}, anvil::Shape{7}, anvil::Shape{3, 1, 5}, anvil::Shape{2, 3, 4, 1},
                                    anvil::Shape{0, 3}, anvil::Shape{1, 1, 1, 1, 13}}) {
    HostTensor t(shape);
    for (float& v : t.data) v = dist(rng);
    file.tensors["t" + std::to_string(file.tensors.size()) + anvil::to_string(shape)] = t;
  }
  // Values that must survive as bits, not just compare equal.
  file.tensors["specials"] = HostTensor(
      {6}, {-0.0f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
            std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::denorm_min(), 3.4028235e38f});

  const std::string p = path("round.safetensors");
  anvil::write_safetensors(p, file);
  const TensorFile back = anvil::read_safetensors(p);
  ASSERT_EQ(back.tensors.size(), file.tensors.size());
  for (const auto& [name, t] : file.tensors) {
    const auto it = back.tensors.find(name);
    ASSERT_NE(it, back.tensors.end()) << name;
    EXPECT_EQ(it->second.shape, t.shape) << name;
    EXPECT_TRUE(same_bits(it->second.data, t.data)) << name;
  }
  EXPECT_EQ(back.tensors.at("t0()").data.size(), 1u);  // a 0-d tensor holds one value
  EXPECT_TRUE(back.metadata.empty());
  EXPECT_FALSE(has_temp_files());
}

// A header no reader would take (over the 100 MB limit) is refused before anything is written: an
// existing file stays as it was, and no temporary is left.
TEST_F(Safetensors, AHeaderBeyondTheReadersLimitIsNotWritten) {
  const std::string p = write_raw("kept.safetensors", "old bytes");
  anvil::TensorFile file;
  file.metadata["note"] = std::string(100'000'000, 'a');
  try {
    anvil::write_safetensors(p, file);
    ADD_FAILURE() << "written";
  } catch (const anvil::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("beyond the 100000000-byte limit of safetensors readers"), std::string::npos)
        << e.what();
  }
  std::ifstream in(p, std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "old bytes");
  EXPECT_FALSE(has_temp_files());
}

// The check a writer makes at its start refuses what write_safetensors would, by the same message,
// from names and shapes alone, and takes what it writes.
TEST_F(Safetensors, TheHeaderCheckRefusesWhatTheWriterWould) {
  const std::map<std::string, std::string> huge = {{"note", std::string(100'000'000, 'a')}};
  const std::map<std::string, anvil::Shape> shapes = {{"w", {2, 3}}, {"b", {3}}};
  const std::string p = path("checked.safetensors");
  auto message = [&](auto&& write) {
    try {
      write();
    } catch (const anvil::InputError& e) {  // the caller's names and metadata: an input error
      return std::string(e.what());
    }
    return std::string("no error");
  };
  TensorFile file;
  file.tensors = {{"w", HostTensor({2, 3}, {1, 2, 3, 4, 5, 6})}, {"b", HostTensor({3}, {7, 8, 9})}};
  file.metadata = huge;
  const std::string refused = message([&] { anvil::check_safetensors_header(p, shapes, huge); });
  EXPECT_NE(refused.find("beyond the 100000000-byte limit"), std::string::npos) << refused;
  EXPECT_EQ(message([&] { anvil::write_safetensors(p, file); }), refused);

  file.metadata = {{"note", "fits"}};
  EXPECT_EQ(message([&] { anvil::check_safetensors_header(p, shapes, file.metadata); }), "no error");
  EXPECT_EQ(message([&] { anvil::write_safetensors(p, file); }), "no error");
  const std::map<std::string, anvil::Shape> bad_name = {{"\xff", {1}}};  // not UTF-8
  EXPECT_NE(message([&] { anvil::check_safetensors_header(p, bad_name, {}); }).find("cannot encode the header"),
            std::string::npos);
  EXPECT_FALSE(has_temp_files());
}

// A shape whose float32 bytes pass 2^63 is refused by name, not wrapped around 64 bits: 2^62
// elements times 4 bytes is 2^64, which wrapped to 0 and passed as an empty tensor. Shapes are
// checked alone and as the running end of the data; no file is written.
TEST_F(Safetensors, TheHeaderCheckRefusesShapesTooLargeToWrite) {
  const std::string p = path("huge.safetensors");
  auto message = [&](const std::map<std::string, anvil::Shape>& shapes) {
    try {
      anvil::check_safetensors_header(p, shapes, {});
    } catch (const anvil::InputError& e) {  // the caller's shapes: an input error
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const int64_t two_62 = int64_t(1) << 62;
  EXPECT_EQ(message({{"w", {two_62}}}),
            p + ": cannot write tensor 'w': shape (4611686018427387904) is too large: its float32 data would take "
                "2^63 bytes or more");
  // 2^31 x 2^31 elements, and 2^61 elements (2^63 bytes, one past int64_t).
  EXPECT_NE(
      message({{"w", {int64_t(1) << 31, int64_t(1) << 31}}}).find("'w': shape (2147483648, 2147483648) is too large"),
      std::string::npos);
  EXPECT_NE(message({{"w", {int64_t(1) << 61}}}).find("is too large"), std::string::npos);
  // Two tensors of 2^62 bytes each: each fits, together they end at 2^63.
  const std::string together = message({{"a", {int64_t(1) << 60}}, {"b", {int64_t(1) << 60}}});
  EXPECT_NE(together.find("tensor 'b': shape (1152921504606846976) is too large: with the tensors before it"),
            std::string::npos)
      << together;
  EXPECT_NE(message({{"w", {2, -3}}}).find("tensor 'w': shape (2, -3) has a negative dimension"), std::string::npos);
  // The largest data that fits, and an empty tensor whatever its other dimensions, are taken.
  EXPECT_EQ(message({{"a", {(int64_t(1) << 61) - 1}}}), "no error");
  EXPECT_EQ(message({{"w", {two_62, two_62, 0}}}), "no error");
  EXPECT_FALSE(fs::exists(p));
}

TEST_F(Safetensors, RoundTripsMetadata) {
  TensorFile file;
  file.tensors["w"] = HostTensor({2}, {1.0f, 2.0f});
  file.metadata = {{"format", "pt"}, {"note", "tab\there, \"quotes\", ünïcode"}, {"empty", ""}};
  const std::string p = path("meta.safetensors");
  anvil::write_safetensors(p, file);
  const TensorFile back = anvil::read_safetensors(p);
  EXPECT_EQ(back.metadata, file.metadata);
  EXPECT_TRUE(same_bits(back.tensors.at("w").data, file.tensors.at("w").data));

  // No metadata: no "__metadata__" key at all.
  file.metadata.clear();
  anvil::write_safetensors(p, file);
  EXPECT_EQ(read_bytes(p).find("__metadata__"), std::string::npos);
}

TEST_F(Safetensors, WriterFollowsTheFormat) {
  TensorFile file;
  file.tensors["zeta"] = HostTensor({1}, {1.0f});
  file.tensors["alpha"] = HostTensor({2}, {2.0f, 3.0f});
  file.tensors["mid"] = HostTensor({}, {4.0f});
  file.metadata = {{"k", "v"}};
  const std::string p = path("layout.safetensors");
  anvil::write_safetensors(p, file);

  const std::string bytes = read_bytes(p);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(n % 8, 0u) << "header not padded to a multiple of 8";
  ASSERT_EQ(bytes.size(), 8 + n + 4 * 4);
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  const size_t close = header.find_last_of('}');
  EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos) << "padding must be spaces";

  const auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["__metadata__"], (nlohmann::json{{"k", "v"}}));
  // Data laid out in sorted name order.
  EXPECT_EQ(j["alpha"], (nlohmann::json{{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}));
  EXPECT_EQ(j["mid"]["shape"], nlohmann::json::array());
  EXPECT_EQ(j["mid"]["data_offsets"], (nlohmann::json{8, 12}));
  EXPECT_EQ(j["zeta"]["data_offsets"], (nlohmann::json{12, 16}));
  // Keys appear in sorted order in the text itself.
  EXPECT_LT(header.find("\"__metadata__\""), header.find("\"alpha\""));
  EXPECT_LT(header.find("\"alpha\""), header.find("\"mid\""));
  EXPECT_LT(header.find("\"mid\""), header.find("\"zeta\""));
  // 2.0f, 3.0f, 4.0f, 1.0f as little-endian IEEE bytes.
  EXPECT_EQ(bytes.substr(8 + n),
            le_bytes(0x40000000, 4) + le_bytes(0x40400000, 4) + le_bytes(0x40800000, 4) + le_bytes(0x3f800000, 4));
}

TEST_F(Safetensors, ReadsHandWrittenF32File) {
  // Unsorted keys, no padding, data not in key order: all legal.
  const std::string header =
      R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
      R"("__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[],"data_offsets":[12,16]},)"
      R"("e":{"dtype":"F32","shape":[3,0],"data_offsets":[0,0]},"g":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})";
  const std::string data = le_bytes(0xdeadbeef, 4) + le_bytes(0x3fc00000, 4) /* 1.5 */ +
                           le_bytes(0xc0100000, 4) /* -2.25 */ + le_bytes(0x40400000, 4) /* 3 */;
  const TensorFile f = anvil::read_safetensors(write_raw("hand.safetensors", make_file(header, data)));
  ASSERT_EQ(f.tensors.size(), 3u);
  EXPECT_EQ(f.tensors.at("w").shape, (anvil::Shape{2}));
  EXPECT_EQ(f.tensors.at("w").data, (std::vector<float>{1.5f, -2.25f}));
  EXPECT_EQ(f.tensors.at("b").shape, anvil::Shape{});
  EXPECT_EQ(f.tensors.at("b").data, (std::vector<float>{3.0f}));
  EXPECT_EQ(f.tensors.at("e").shape, (anvil::Shape{3, 0}));
  EXPECT_TRUE(f.tensors.at("e").data.empty());
  EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
}

TEST_F(Safetensors, ReadsF64AsFloat32) {
  const std::string header = R"({"d":{"dtype":"F64","shape":[2,2],"data_offsets":[0,32]}})";
  const std::string data = le_bytes(0x3FB999999999999AULL, 8) /* 0.1 */ +
                           le_bytes(0xC004000000000000ULL, 8) /* -2.5 */ +
                           le_bytes(0x4202A05F20000000ULL, 8) /* 1e10 */ + le_bytes(0x3FD5555555555555ULL, 8) /* 1/3 */;
  const TensorFile f = anvil::read_safetensors(write_raw("f64.safetensors", make_file(header, data)));
  const HostTensor& d = f.tensors.at("d");
  EXPECT_EQ(d.shape, (anvil::Shape{2, 2}));
  ASSERT_EQ(d.data.size(), 4u);
  EXPECT_EQ(d.data[0], 0.1f);
  EXPECT_EQ(d.data[1], -2.5f);
  EXPECT_EQ(d.data[2], 1e10f);
  EXPECT_EQ(d.data[3], 1.0f / 3.0f);  // rounded, not truncated
}

// The float32 bit patterns of a tensor, to compare exactly (NaN payloads and -0 included).
std::vector<uint32_t> bits_of(const HostTensor& t) {
  std::vector<uint32_t> bits(t.data.size());
  if (!bits.empty()) std::memcpy(bits.data(), t.data.data(), bits.size() * sizeof(uint32_t));
  return bits;
}

// One tensor of `dtype` holding `elements` (each `itemsize` little-endian bytes), stored after a
// `gap`-byte BOOL tensor so that its data is not aligned.
std::string one_tensor_file(const std::string& dtype, int itemsize, const std::vector<uint64_t>& elements, int gap) {
  std::string data(static_cast<size_t>(gap), '\x01');
  for (uint64_t e : elements) data += le_bytes(e, itemsize);
  const nlohmann::json header = {
      {"gap", {{"dtype", "BOOL"}, {"shape", {gap}}, {"data_offsets", {0, gap}}}},
      {"t", {{"dtype", dtype}, {"shape", {elements.size()}}, {"data_offsets", {gap, data.size()}}}}};
  return make_file(header.dump(), data);
}

TEST_F(Safetensors, ReadsF16Exactly) {
  const std::vector<uint64_t> halves = {
      0x3c00,  // 1.0
      0xc100,  // -2.5
      0x7bff,  // 65504, the largest half
      0x0001,  // 2^-24, the smallest subnormal
      0x83ff,  // -1023 * 2^-24, the largest subnormal, negative
      0x0400,  // 2^-14, the smallest normal
      0x8000,  // -0
      0x7c00,  // Inf
      0xfc00,  // -Inf
      0x7e00,  // the quiet NaN
      0x7c01,  // a signalling NaN: its payload moves up 13 bits
  };
  const TensorFile f = anvil::read_safetensors(write_raw("f16.safetensors", one_tensor_file("F16", 2, halves, 1)));
  EXPECT_EQ(f.tensors.at("t").shape, (anvil::Shape{11}));
  EXPECT_EQ(bits_of(f.tensors.at("t")),
            (std::vector<uint32_t>{0x3f800000, 0xc0200000, 0x477fe000, 0x33800000, 0xb87fc000, 0x38800000, 0x80000000,
                                   0x7f800000, 0xff800000, 0x7fc00000, 0x7f802000}));
  EXPECT_EQ(f.tensors.at("t").data[4], -1023 * std::ldexp(1.0f, -24));
}

TEST_F(Safetensors, ReadsBF16Exactly) {
  // bfloat16 is the upper half of a float32: 1, -5, 3.140625, -0.0078125, Inf, -Inf, a subnormal, NaN.
  const std::vector<uint64_t> bf16 = {0x3f80, 0xc0a0, 0x4049, 0xbc00, 0x7f80, 0xff80, 0x0001, 0x7fc1};
  const TensorFile f = anvil::read_safetensors(write_raw("bf16.safetensors", one_tensor_file("BF16", 2, bf16, 3)));
  const HostTensor& t = f.tensors.at("t");
  EXPECT_EQ(bits_of(t), (std::vector<uint32_t>{0x3f800000, 0xc0a00000, 0x40490000, 0xbc000000, 0x7f800000, 0xff800000,
                                               0x00010000, 0x7fc10000}));
  EXPECT_EQ(t.data[2], 3.140625f);
  EXPECT_EQ(t.data[3], -0.0078125f);
}

TEST_F(Safetensors, RoundsF64ToNearestFloat) {
  const std::vector<double> doubles = {
      0.1,
      1.0 + std::ldexp(1.0, -24),      // halfway between 1 and the next float: ties to even, 1
      1.0 + 3 * std::ldexp(1.0, -24),  // halfway again: ties to even, 1 + 2^-22
      -1.0 / 3.0,
      0x1.fffffefp127,  // above FLT_MAX, but nearer to it than to Inf
      1e-50,            // below half the smallest subnormal: 0
      -std::numeric_limits<double>::infinity(),
  };
  std::vector<uint64_t> raw(doubles.size());
  std::memcpy(raw.data(), doubles.data(), doubles.size() * sizeof(double));
  const TensorFile f = anvil::read_safetensors(write_raw("f64.safetensors", one_tensor_file("F64", 8, raw, 5)));
  const std::vector<float> expected = {0.1f,
                                       1.0f,
                                       1.0f + std::ldexp(1.0f, -22),
                                       -1.0f / 3.0f,
                                       std::numeric_limits<float>::max(),
                                       0.0f,
                                       -std::numeric_limits<float>::infinity()};
  EXPECT_EQ(f.tensors.at("t").data, expected);
}

// A finite F64 value that would round to Inf is refused, naming the tensor, rather than silently becoming Inf.
TEST_F(Safetensors, RefusesF64BeyondFloatRange) {
  for (const double big : {0x1.ffffffp127, -1e300}) {
    std::vector<uint64_t> raw(2);
    const double values[2] = {1.0, big};
    std::memcpy(raw.data(), values, sizeof values);
    expect_input_error(one_tensor_file("F64", 8, raw, 0), "tensor 't': F64 value ");
    expect_input_error(one_tensor_file("F64", 8, raw, 0), " at index 1 is beyond float32's range");
  }
}

// Integer and bool tensors (BatchNorm's num_batches_tracked is I64) do not fail the file: they are listed.
TEST_F(Safetensors, SkipsIntegerAndBoolTensors) {
  const std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("bn.num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[8,16]},)"
                             R"("mask":{"dtype":"BOOL","shape":[3],"data_offsets":[16,19]},)"
                             R"("b":{"dtype":"F32","shape":[1],"data_offsets":[19,23]}})";
  const std::string data = le_bytes(0x3f800000, 4) + le_bytes(0x40000000, 4) + le_bytes(7, 8) +
                           std::string("\1\0\1", 3) + le_bytes(0xc0400000, 4);
  const std::string p = write_raw("mixed.safetensors", make_file(header, data));
  const TensorFile f = anvil::read_safetensors(p);
  EXPECT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(f.tensors.at("w").data, (std::vector<float>{1.0f, 2.0f}));
  EXPECT_EQ(f.tensors.at("b").data, (std::vector<float>{-3.0f}));  // unaligned, after the bools
  EXPECT_EQ(f.skipped, (std::map<std::string, std::string>{{"bn.num_batches_tracked", "I64"}, {"mask", "BOOL"}}));
  try {
    anvil::require_tensor(f, "mixed.safetensors", "bn.num_batches_tracked", {});
    FAIL() << "no error";
  } catch (const anvil::InputError& e) {
    EXPECT_STREQ(e.what(),
                 "mixed.safetensors: tensor 'bn.num_batches_tracked': dtype I64 cannot be loaded (only F16, BF16, F32 "
                 "and F64 can)");
  }
  // A skipped tensor's bounds are still checked.
  expect_input_error(make_file(R"({"n":{"dtype":"I64","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0')),
                     "do not match shape (2) of I64 (16 bytes)");
}

TEST_F(Safetensors, RejectsBadFileFraming) {
  expect_input_error("", "too short");
  expect_input_error(std::string("\x05\x00\x00", 3), "too short");
  // Header length larger than the file.
  expect_input_error(le_bytes(100, 8) + "{}", "header length 100");
  // Absurd header length.
  expect_input_error(le_bytes(1ULL << 60, 8) + "{}", "limit");
  expect_input_error(le_bytes(~0ULL, 8) + "{}", "limit");
}

TEST_F(Safetensors, RejectsBadHeaders) {
  expect_input_error(make_file("{\"w\": ", ""), "not valid JSON");
  expect_input_error(make_file("not json at all", ""), "not valid JSON");
  expect_input_error(make_file("[1, 2]", ""), "not a JSON object");
  expect_input_error(make_file(R"({"w": 3})", ""), "tensor 'w': entry is not a JSON object");
  expect_input_error(make_file(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", std::string(4, '\0')), "dtype");
  expect_input_error(make_file(R"({"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})", std::string(4, '\0')),
                     "dtype");
  expect_input_error(
      make_file(R"({"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}})", std::string(4, '\0')),
      "tensor 'w': unsupported dtype 'F8_E4M3'");
  expect_input_error(make_file(R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", std::string(4, '\0')), "shape");
  expect_input_error(make_file(R"({"w": {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}})", std::string(4, '\0')),
                     "shape");
  expect_input_error(
      make_file(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", std::string(4, '\0')),
      "negative dimension -1");
  expect_input_error(
      make_file(R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", std::string(4, '\0')),
      "non-integer");
  expect_input_error(
      make_file(R"({"w": {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]}})", std::string(4, '\0')),
      "non-integer");
  expect_input_error(make_file(R"({"__metadata__": ["a"]})", ""), "__metadata__");
  expect_input_error(make_file(R"({"__metadata__": {"a": 1}})", ""), "__metadata__ value for 'a'");
}

TEST_F(Safetensors, RejectsBadOffsets) {
  const std::string four(4, '\0');
  expect_input_error(make_file(R"({"w": {"dtype": "F32", "shape": [1]}})", four), "data_offsets");
  expect_input_error(make_file(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", four), "data_offsets");
  expect_input_error(make_file(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", four),
                     "data_offsets");
  expect_input_error(make_file(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", four),
                     "data_offsets");
  expect_input_error(make_file(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}})", four),
                     "data_offsets");
  expect_input_error(make_file(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}})", four),
                     "begin is after end");
  expect_input_error(make_file(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", four),
                     "out of range");
  expect_input_error(
      make_file(
          R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [18446744073709551612, 18446744073709551615]}})",
          four),
      "data_offsets");
  expect_input_error(
      make_file(R"({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}})", std::string(16, '\0')),
      "tensor 'x': data_offsets [0, 12] do not match shape (2, 2) of F32 (16 bytes)");
  expect_input_error(
      make_file(R"({"x": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}})", std::string(16, '\0')),
      "do not match shape (2) of F64 (16 bytes)");
  // Element count overflow must be caught, not wrap around to a small size.
  expect_input_error(
      make_file(R"({"x": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", ""),
      "too many elements");
  expect_input_error(
      make_file(R"({"x": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", ""),
      "too many elements");
}

// As the reference implementation: the tensors' bytes tile the data exactly,
// each key once, no byte-order mark, nothing but space padding after the JSON.
TEST_F(Safetensors, RejectsWhatTheSpecForbids) {
  const std::string eight(8, '\0');
  expect_input_error(make_file(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                   "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}})",
                               eight),
                     "tensor 'b': data_offsets overlap another tensor's bytes");
  expect_input_error(make_file(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", eight),
                     "tensor 'a': data_offsets leave a gap of 4 bytes before it");
  expect_input_error(make_file(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", eight),
                     "bad.safetensors: 4 bytes after the last tensor's data");
  expect_input_error(make_file(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                   "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                               eight),
                     "bad.safetensors: header: a: duplicate key");
  expect_input_error(
      make_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "dtype": "F16"}})", eight),
      "bad.safetensors: header: a.dtype: duplicate key");
  const std::string ok = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})";
  expect_input_error(make_file("\xEF\xBB\xBF" + ok, eight), "header starts with a byte-order mark");
  expect_input_error(make_file(ok + std::string(1, '\0'), eight), "header has bytes after its JSON object");
  expect_input_error(make_file(ok + std::string(3, '\0'), eight), "header has bytes after its JSON object");
  // A NUL ends the JSON for the reader: a closing brace after it must not make the rest pass.
  expect_input_error(make_file(ok + std::string(1, '\0') + " junk }", eight),
                     "header has bytes after its JSON object: a NUL byte at offset " + std::to_string(ok.size()));
  expect_input_error(make_file(ok + " x", eight), "header is not valid JSON");
  // Whitespace padding (the writers' alignment) is allowed.
  const TensorFile f = anvil::read_safetensors(write_raw("padded.safetensors", make_file(ok + "   \n", eight)));
  EXPECT_EQ(f.tensors.at("a").data, (std::vector<float>{0.f, 0.f}));
}

TEST_F(Safetensors, RejectsTruncatedFiles) {
  TensorFile file;
  file.tensors["a"] = HostTensor({4}, {1, 2, 3, 4});
  file.tensors["b"] = HostTensor({2, 2}, {5, 6, 7, 8});
  const std::string good_path = path("good.safetensors");
  anvil::write_safetensors(good_path, file);
  const std::string good = read_bytes(good_path);
  expect_input_error(good.substr(0, good.size() - 1), "out of range");
  expect_input_error(good.substr(0, 20), "header length");
  expect_input_error(good.substr(0, 7), "too short");
}

// The bytes a process has read with read() and its kin (/proc/self/io's rchar), or -1 without it.
long long bytes_read_by_this_process() {
  std::ifstream io("/proc/self/io");
  std::string key;
  long long value = -1;
  while (io >> key >> value)
    if (key == "rchar:") return value;
  return -1;
}

// A large file is mapped, not read: reading it costs no read() of its data, and its values arrive intact.
TEST_F(Safetensors, LargeFilesAreMappedNotRead) {
  TensorFile file;
  HostTensor big({8, 1 << 20});  // 32 MiB
  for (size_t i = 0; i < big.data.size(); ++i) big.data[i] = static_cast<float>(i % 1000);
  file.tensors["big"] = big;
  file.tensors["small"] = HostTensor({3}, {1.0f, 2.0f, 3.0f});
  const std::string p = path("big.safetensors");
  anvil::write_safetensors(p, file);

  const long long before = bytes_read_by_this_process();
  if (before < 0) GTEST_SKIP() << "no /proc/self/io here";
  const TensorFile back = anvil::read_safetensors(p);
  const long long read = bytes_read_by_this_process() - before;
  EXPECT_LT(read, 1 << 20) << "bytes read through read(): the file should be mapped";
  EXPECT_TRUE(same_bits(back.tensors.at("big").data, big.data));
  EXPECT_EQ(back.tensors.at("small").data, (std::vector<float>{1.0f, 2.0f, 3.0f}));
}

// A sparse file whose F32 tensor is 1 TiB (no disk taken) is refused before any allocation: its
// tensors would not fit the host's memory, and converting them would end with the OOM killer.
TEST_F(Safetensors, TensorsBeyondTheHostsMemoryAreRefusedFirst) {
  const uint64_t elements = uint64_t(1) << 38;
  const std::string header = R"({"huge":{"dtype":"F32","shape":[)" + std::to_string(elements) +
                             R"(],"data_offsets":[0,)" + std::to_string(elements * 4) + "]}}";
  const std::string p = write_raw("bad.safetensors", make_file(header, ""));
  std::error_code ec;
  fs::resize_file(p, 8 + header.size() + elements * 4, ec);
  if (ec) GTEST_SKIP() << "this file system refuses a sparse 1 TiB file: " << ec.message();
  try {
    anvil::read_safetensors(p);
    ADD_FAILURE() << "a 1 TiB tensor was read";
  } catch (const anvil::InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("bad.safetensors: its tensors take 1024.0 GiB, more than the "), std::string::npos) << msg;
    EXPECT_NE(msg.find(" GiB of host memory available"), std::string::npos) << msg;
  }
}

TEST_F(Safetensors, MissingFileIsInputError) {
  const std::string p = path("absent.safetensors");
  try {
    anvil::read_safetensors(p);
    FAIL() << "no error";
  } catch (const anvil::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("absent.safetensors"), std::string::npos) << e.what();
  }
}

TEST_F(Safetensors, WriteIntoMissingDirectoryThrowsAndLeavesNothing) {
  TensorFile file;
  file.tensors["w"] = HostTensor({1}, {1.0f});
  const std::string p = path("no/such/dir/out.safetensors");
  try {
    anvil::write_safetensors(p, file);
    FAIL() << "no error";
  } catch (const anvil::Error& e) {
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(std::strerror(ENOENT)), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(path("no")));
}

TEST_F(Safetensors, FailedRenameRemovesTheTemporaryFile) {
  // A directory in the way makes the final rename fail after the data was written.
  const std::string p = path("blocked.safetensors");
  fs::create_directory(p);
  fs::create_directory(p + "/child");  // non-empty, so rename cannot replace it
  TensorFile file;
  file.tensors["w"] = HostTensor({3}, {1.0f, 2.0f, 3.0f});
  EXPECT_THROW(anvil::write_safetensors(p, file), anvil::Error);
  EXPECT_FALSE(has_temp_files());
  EXPECT_TRUE(fs::is_directory(p));
}

// The writer keeps a file's permissions, and its short temporary name lets a
// destination name use the whole of NAME_MAX.
TEST_F(Safetensors, RewriteKeepsTheModeAndLongNamesWork) {
  TensorFile file;
  file.tensors["w"] = HostTensor({2}, {1.0f, 2.0f});
  const std::string p = path("private.safetensors");
  anvil::write_safetensors(p, file);
  fs::permissions(p, fs::perms::owner_read | fs::perms::owner_write);
  file.tensors["w"] = HostTensor({2}, {3.0f, 4.0f});
  anvil::write_safetensors(p, file);
  EXPECT_EQ(fs::status(p).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_EQ(anvil::read_safetensors(p).tensors.at("w").data, (std::vector<float>{3.0f, 4.0f}));
  const std::string long_name = path(std::string(255 - 12, 'n') + ".safetensors");  // 255 bytes
  anvil::write_safetensors(long_name, file);
  EXPECT_EQ(anvil::read_safetensors(long_name).tensors.at("w").data, (std::vector<float>{3.0f, 4.0f}));
  EXPECT_FALSE(has_temp_files());
}

TEST_F(Safetensors, ReplacesAnExistingFile) {
  const std::string p = path("replace.safetensors");
  TensorFile first;
  first.tensors["old"] = HostTensor({100}, std::vector<float>(100, 1.0f));
  anvil::write_safetensors(p, first);
  TensorFile second;
  second.tensors["new"] = HostTensor({2}, {7.0f, 8.0f});
  anvil::write_safetensors(p, second);

  const TensorFile back = anvil::read_safetensors(p);
  ASSERT_EQ(back.tensors.size(), 1u);
  EXPECT_EQ(back.tensors.at("new").data, (std::vector<float>{7.0f, 8.0f}));
  EXPECT_FALSE(has_temp_files());
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(Safetensors, WriteRejectsInconsistentTensors) {
  const std::string p = path("inconsistent.safetensors");
  TensorFile file;
  file.tensors["w"] = HostTensor({2, 3}, std::vector<float>(5));
  EXPECT_THROW(anvil::write_safetensors(p, file), anvil::InputError);
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(has_temp_files());

  TensorFile clash;
  clash.tensors["__metadata__"] = HostTensor({1}, {1.0f});
  EXPECT_THROW(anvil::write_safetensors(p, clash), anvil::InputError);
  EXPECT_FALSE(fs::exists(p));
}

// A file of weights: two parameters, an extra float tensor and a skipped integer one.
TensorFile weights_file() {
  TensorFile file;
  file.tensors["conv.weight"] = HostTensor({2, 1}, {1.0f, 2.0f});
  file.tensors["conv.bias"] = HostTensor({2}, {3.0f, 4.0f});
  file.tensors["head.extra"] = HostTensor({1}, {5.0f});
  file.skipped["bn.num_batches_tracked"] = "I64";
  return file;
}

std::string selection_error(const TensorFile& file, const std::map<std::string, anvil::Shape>& shapes, bool strict) {
  try {
    anvil::select_parameters(file, "w.safetensors", shapes, strict);
  } catch (const anvil::InputError& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(SelectParameters, PicksParametersAndListsTheRest) {
  const std::map<std::string, anvil::Shape> shapes = {{"conv.weight", {2, 1}}, {"conv.bias", {2}}};
  const anvil::ParameterSelection s = anvil::select_parameters(weights_file(), "w.safetensors", shapes, false);
  ASSERT_EQ(s.parameters.size(), 2u);
  EXPECT_EQ(s.parameters.at("conv.weight").data, (std::vector<float>{1.0f, 2.0f}));
  EXPECT_EQ(s.parameters.at("conv.bias").data, (std::vector<float>{3.0f, 4.0f}));
  EXPECT_EQ(s.unused, (std::vector<std::string>{"bn.num_batches_tracked", "head.extra"}));
  EXPECT_EQ(anvil::unused_tensors_message("w.safetensors", s.unused),
            "w.safetensors: 2 tensors are not parameters of this network: bn.num_batches_tracked, head.extra");
  EXPECT_EQ(anvil::unused_tensors_message("w.safetensors", {"x"}),
            "w.safetensors: 1 tensor is not a parameter of this network: x");
}

TEST(SelectParameters, StrictRefusesUnusedTensors) {
  const std::map<std::string, anvil::Shape> shapes = {{"conv.weight", {2, 1}}, {"conv.bias", {2}}};
  EXPECT_EQ(selection_error(weights_file(), shapes, true),
            "w.safetensors: 2 tensors are not parameters of this network: bn.num_batches_tracked, head.extra "
            "(--strict)");
  TensorFile exact = weights_file();
  exact.tensors.erase("head.extra");
  exact.skipped.clear();
  EXPECT_EQ(anvil::select_parameters(exact, "w.safetensors", shapes, true).unused, std::vector<std::string>{});
}

TEST(SelectParameters, RefusesMissingWrongShapeAndIntegerParameters) {
  EXPECT_EQ(selection_error(weights_file(), {{"conv.weight", {2, 1}}, {"fc.weight", {3}}}, false),
            "w.safetensors: no tensor named 'fc.weight'");
  EXPECT_EQ(selection_error(weights_file(), {{"conv.bias", {3}}}, false),
            "w.safetensors: tensor 'conv.bias' has shape (2), expected (3)");
  EXPECT_EQ(selection_error(weights_file(), {{"bn.num_batches_tracked", {}}}, false),
            "w.safetensors: tensor 'bn.num_batches_tracked': dtype I64 cannot be loaded (only F16, BF16, F32 and F64 "
            "can)");
}

TEST_F(Safetensors, RequireTensorChecksNameAndShape) {
  TensorFile file;
  file.tensors["input"] = HostTensor({2, 3});
  EXPECT_EQ(&anvil::require_tensor(file, "data.safetensors", "input", {2, 3}), &file.tensors.at("input"));

  try {
    anvil::require_tensor(file, "data.safetensors", "input", {2, 4});
    FAIL() << "no error";
  } catch (const anvil::InputError& e) {
    EXPECT_STREQ(e.what(), "data.safetensors: tensor 'input' has shape (2, 3), expected (2, 4)");
  }
  try {
    anvil::require_tensor(file, "data.safetensors", "label", {2});
    FAIL() << "no error";
  } catch (const anvil::InputError& e) {
    EXPECT_STREQ(e.what(), "data.safetensors: no tensor named 'label'");
  }
  // A TensorFile built in memory whose values do not fill the shape (a file read never is).
  file.tensors["short"] = HostTensor({2, 2}, {1.f});
  try {
    anvil::require_tensor(file, "data.safetensors", "short", {2, 2});
    FAIL() << "no error";
  } catch (const anvil::InputError& e) {
    EXPECT_STREQ(e.what(), "data.safetensors: tensor 'short' has 1 values for shape (2, 2)");
  }
  EXPECT_EQ(selection_error(file, {{"short", {2, 2}}}, false),
            "w.safetensors: tensor 'short' has 1 values for shape (2, 2)");
}

}  // namespace
