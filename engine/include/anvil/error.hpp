// The kinds of failure that reach the user: bad input (a malformed network, a
// wrong shape, a bad file: exit code 2), runtime failures (CUDA, cuDNN, out of
// memory: exit code 1) and training that diverged to NaN or Inf (exit code 3).
// All are exceptions, never exit(), so tests and embedding programs can catch them.
#pragma once

#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>

namespace anvil {

// A runtime failure: a library call failed or the device ran out of memory.
// Every message is one line: control bytes (a newline or a tab in a key or a
// name from the user's file) and Unicode's line separators (U+0085, U+2028,
// U+2029) are written as escapes, and a message longer
// than kMaxMessageBytes (a long value from the user's file, echoed) loses
// its middle, saying how many bytes were left out: its start names the file,
// the place and the problem, and its end keeps a reason that follows a long
// name ("...: cannot write: File name too long").
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(one_line(what)) {}

  static constexpr size_t kMaxMessageBytes = 1024;

  static std::string one_line(const std::string& text) {
    std::string whole;
    for (size_t i = 0; i < text.size(); ++i) append_escaped(whole, text, i);
    if (whole.size() <= kMaxMessageBytes) return whole;
    // Cut the text itself, so that no escape is split and the note counts the text's bytes: the
    // start gets two thirds of the room, the end the rest.
    const size_t room = kMaxMessageBytes - 48;  // room for the note
    const size_t head_room = room * 2 / 3;
    size_t head = 0, head_bytes = 0;  // the text's bytes kept at the start, and their escaped size
    for (; head < text.size() && head_bytes + escaped_size(text, head) <= head_room; ++head)
      head_bytes += escaped_size(text, head);
    size_t tail = text.size(), tail_bytes = 0;  // the kept end starts at text[tail]
    for (; tail > head && tail_bytes + escaped_size(text, tail - 1) <= room - head_bytes; --tail)
      tail_bytes += escaped_size(text, tail - 1);
    // Each side at whole UTF-8 characters: at most 3 continuation bytes (more is not UTF-8 anyway).
    for (int back = 0; back < 3 && head > 0 && is_continuation(text[head]); ++back) --head;
    for (int on = 0; on < 3 && tail < text.size() && is_continuation(text[tail]); ++on) ++tail;
    std::string out;
    for (size_t i = 0; i < head; ++i) append_escaped(out, text, i);
    out += "... (" + std::to_string(tail - head) + " bytes left out) ...";
    for (size_t i = tail; i < text.size(); ++i) append_escaped(out, text, i);
    return out;
  }

  // A byte as \xHH (the escape messages use for bytes that cannot be shown as they are).
  static void append_hex(std::string& out, unsigned char byte) {
    static const char* const kHex = "0123456789abcdef";
    out += "\\x";
    out += kHex[byte >> 4];
    out += kHex[byte & 15];
  }

  // A UTF-8 continuation byte (10xxxxxx): a cut before it would split a character.
  static bool is_continuation(char c) { return (static_cast<unsigned char>(c) & 0xc0) == 0x80; }

 private:
  // Whether text[i] is a byte of U+0085, U+2028 or U+2029 (C2 85, E2 80 A8, E2 80 A9): line
  // breaks to Unicode, which some terminals and log readers honour.
  static bool in_line_separator(const std::string& text, size_t i) {
    auto is = [&](size_t j, unsigned char byte) {
      return j < text.size() && static_cast<unsigned char>(text[j]) == byte;
    };
    for (size_t start = i >= 2 ? i - 2 : 0; start <= i; ++start) {
      if (i <= start + 1 && is(start, 0xc2) && is(start + 1, 0x85)) return true;
      if (is(start, 0xe2) && is(start + 1, 0x80) && (is(start + 2, 0xa8) || is(start + 2, 0xa9))) return true;
    }
    return false;
  }

  static size_t escaped_size(const std::string& text, size_t i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte == '\n' || byte == '\t') return 2;
    return byte < 0x20 || byte == 0x7f || in_line_separator(text, i) ? 4 : 1;
  }

  // text[i] as an escape where it is a control byte or part of a line separator (\n, \t,
  // \xHH); any other byte as it is.
  static void append_escaped(std::string& out, const std::string& text, size_t i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte == '\n') {
      out += "\\n";
    } else if (byte == '\t') {
      out += "\\t";
    } else if (byte < 0x20 || byte == 0x7f || in_line_separator(text, i)) {
      append_hex(out, byte);
    } else {
      out += text[i];
    }
  }
};

// The user's input is wrong: JSON, shapes, tensor files, command-line values.
class InputError : public Error {
 public:
  using Error::Error;
};

// Training produced a NaN or an infinity; the message says at which step and where it first
// appears (the CLI exits with code 3).
class NonFiniteError : public Error {
 public:
  using Error::Error;

  // A non-finite value as messages show it: "inf", "-inf" or "nan" (never "-nan").
  static std::string shown(float value) { return std::isnan(value) ? "nan" : std::to_string(value); }
};

}  // namespace anvil
