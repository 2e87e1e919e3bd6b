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

// Under AddressSanitizer (GCC says so with a macro, clang with a feature) its allocator counts.
#if defined(__SANITIZE_ADDRESS__)
#define ANVIL_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ANVIL_UNDER_ASAN 1
#endif
#endif
#if defined(ANVIL_UNDER_ASAN)
#include <sanitizer/allocator_interface.h>
#endif

namespace anvil::testing {
namespace {

// Bytes the allocator has handed out and not taken back.
size_t allocated_bytes() {
#if defined(ANVIL_UNDER_ASAN)
  return __sanitizer_get_current_allocated_bytes();
#else
  return mallinfo2().uordblks;
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
};

std::vector<Shape> shapes() {
  const int n = 200000;
  const std::string long_text(40, 'x');
  return {
      {"integers", repeated("[", [](int) { return "0"; }, n, "]")},
      {"empty objects", repeated("[", [](int) { return "{}"; }, n, "]")},
      {"empty arrays", repeated("[", [](int) { return "[]"; }, n, "]")},
      {"short keys", repeated("{", [](int i) { return "\"" + std::to_string(i) + "\":0"; }, n, "}")},
      {"long keys", repeated("{", [&](int i) { return "\"" + long_text + std::to_string(i) + "\":1"; }, n, "}")},
      {"long strings", repeated("[", [&](int) { return "\"" + long_text + "\""; }, n, "]")},
      {"tensor header", repeated("{", [](int i) {
         return "\"layer" + std::to_string(i) + ".weight\":{\"dtype\":\"F32\",\"shape\":[3,4],\"data_offsets\":[0,48]}";
       }, n / 4, "}")},
  };
}

// The count is never below what the tree really takes (a budget one byte short of it is refused),
// and within 4 times it (so a document that fits is not refused for a count far too high).
TEST(JsonDocument, TheMemoryCountBoundsWhatTheTreeTakes) {
  for (const Shape& shape : shapes()) {
    SCOPED_TRACE(shape.name);
    const size_t before = allocated_bytes();
    size_t taken = 0;
    {
      const nlohmann::json tree = nlohmann::json::parse(shape.text);
      taken = allocated_bytes() - before;
    }
    ASSERT_GT(taken, shape.text.size()) << "the allocator's count did not move";
    try {
      parse_json_document(shape.text, taken - 1);
      ADD_FAILURE() << "a budget of " << taken - 1 << " bytes, below the " << taken << " the tree takes, was accepted";
    } catch (const InputError& e) {
      EXPECT_PRED_FORMAT2(Contains, e.what(), "the JSON document would take more memory to hold than the ");
    }
    EXPECT_NO_THROW(parse_json_document(shape.text, 4 * taken)) << taken << " bytes taken";
  }
}

TEST(JsonDocument, TheDefaultBudgetIsTheHostsMemory) {
  EXPECT_EQ(parse_json_document(R"({"a": [1, 2, {"b": "c"}]})")["a"][2]["b"], "c");
}

}  // namespace
}  // namespace anvil::testing
