// EXPECT_PRED_FORMAT2(Contains, text, part): a failure shows both strings.
#pragma once

#include <gtest/gtest.h>

#include <string>

namespace anvil::testing {

inline ::testing::AssertionResult Contains(const char* text_expr, const char* part_expr, const std::string& text,
                                           const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << text_expr << " does not contain " << part_expr << "\n  text: " << text
                                       << "\n  part: " << part;
}

}  // namespace anvil::testing
