// parse_json_document's first pass (engine/src/spec/json_reader.cpp): what it
// counts of the memory the document takes as a JSON tree, checked against the
// allocator's own count, so that a small hostile file (a tensor header, a
// network) is refused before its tree can take the host's memory.
#include <gtest/gtest.h>
#include <malloc.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

#include "anvil/error.hpp"
#include "engine/src/spec/json_reader.hpp"
#include "tests/contains.hpp"

#include "tests/sanitizers.hpp"

// Under AddressSanitizer its allocator counts.
#if defined(ANVIL_UNDER_ASAN)
#include <sanitizer/allocator_interface.h>
#endif

namespace anvil::testing {
namespace {

// Bytes the allocator has handed out and not taken back (glibc: its heap and its mmapped blocks).
size_t allocated_bytes() {
#if defined(ANVIL_UNDER_ASAN)
  return __sanitizer_get_current_allocated_bytes();
#else
  const struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
#endif
}

std::string repeated(const std::string& open, const std::function<std::string(int)>& item, int count,
                     const std::string& close) {
  std::string text = open;
  for (int i = 0; i < count; ++i) text += (i ? "," : "") + item(i);
  return text + close;
}

struct Shape {
  std::string name, text;
  size_t token_bytes = 0;  // the longest token's text and value: the lexer holds both at the peak
};

std::vector<Shape> shapes() {
  const int n = 200000;
  const std::string long_text(40, 'x'), mid_text(27, 'y');
  const size_t big = size_t(4) << 20;
  std::string escaped = "\"";
  for (size_t i = 0; i < big / 4; ++i) escaped += "\\u0041";
  escaped += "\"";
  return {
      {"integers", repeated(
                       "[", [](int) { return "0"; }, n, "]")},
      {"empty objects", repeated(
                            "[", [](int) { return "{}"; }, n, "]")},
      {"empty arrays", repeated(
                           "[", [](int) { return "[]"; }, n, "]")},
      {"short keys", repeated(
                         "{", [](int i) { return "\"" + std::to_string(i) + "\":0"; }, n, "}")},
      {"long keys", repeated(
                        "{", [&](int i) { return "\"" + long_text + std::to_string(i) + "\":1"; }, n, "}")},
      {"long strings", repeated(
                           "[", [&](int) { return "\"" + long_text + "\""; }, n, "]")},
      {"strings of 27 bytes", repeated(
                                  "[", [&](int) { return "\"" + mid_text + "\""; }, n, "]")},
      {"tensor header", repeated(
                            "{",
                            [](int i) {
                              return "\"layer" + std::to_string(i) +
                                     ".weight\":{\"dtype\":\"F32\",\"shape\":[3,4],\"data_offsets\":[0,48]}";
                            },
                            n / 4, "}")},
      {"one long string", "[\"" + std::string(big, 'z') + "\"]", 2 * big + 2},
      {"one long escaped string", "[" + escaped + "]", escaped.size() + big / 4},
      {"one long number", "[0." + std::string(big, '1') + "]", 2 * (big + 2)},
  };
}

// The count is never below what the parse takes (a budget one byte short of the tree that stays,
// plus the longest token's text and value that the lexer holds meanwhile, is refused), and within 4
// times it, 8 where the lexer's buffers, grown by doubling, may hold twice the token (so a document
// that fits is not refused for a count far too high).
TEST(JsonDocument, TheMemoryCountBoundsWhatTheParseTakes) {
  {
    const size_t before = allocated_bytes();
    const std::vector<char> block(size_t(1) << 20, 'x');
    if (allocated_bytes() - before < block.size())
      GTEST_SKIP() << "this allocator's count of the bytes it handed out does not move";
  }
  for (const Shape& shape : shapes()) {
    SCOPED_TRACE(shape.name);
    const size_t before = allocated_bytes();
    size_t tree = 0;
    {
      const nlohmann::json parsed = nlohmann::json::parse(shape.text);
      tree = allocated_bytes() - before;
    }
    const size_t taken = tree + shape.token_bytes;
    try {
      parse_json_document(shape.text, taken - 1);
      ADD_FAILURE() << "a budget of " << taken - 1 << " bytes, below the " << taken << " the parse takes, was accepted";
    } catch (const InputError& e) {
      EXPECT_PRED_FORMAT2(Contains, e.what(), "the JSON document would take more memory to hold than the ");
    }
    EXPECT_NO_THROW(parse_json_document(shape.text, (shape.token_bytes ? 8 : 4) * taken)) << taken << " bytes taken";
  }
}

}  // namespace
}  // namespace anvil::testing
