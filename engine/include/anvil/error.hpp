// The kinds of failure that reach the user: bad input (a malformed network, a
// wrong shape, a bad file: exit code 2), runtime failures (CUDA, cuDNN, out of
// memory: exit code 1) and training that diverged to NaN or Inf (exit code 3).
// All are exceptions, never exit(), so tests and embedding programs can catch them.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

namespace anvil {

// A runtime failure: a library call failed or the device ran out of memory.
// Every message is one line: control bytes (a newline or a tab in a key or a
// name from the user's file) are written as escapes, and a message longer
// than kMaxMessageBytes (a long value from the user's file, echoed) is cut
// there, saying how many bytes were left out. Messages name the file, the
// place and the problem first.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(one_line(what)) {}

  static constexpr size_t kMaxMessageBytes = 1024;

  static std::string one_line(const std::string& text) {
    std::string whole;
    for (const char c : text) append_escaped(whole, c);
    if (whole.size() <= kMaxMessageBytes) return whole;
    // Cut the text itself, so that no escape is split and the note counts the text's bytes.
    const size_t room = kMaxMessageBytes - 40;  // room for the note
    std::string out;
    size_t used = 0;
    for (; used < text.size(); ++used) {  // stops at the first byte that does not fit
      append_escaped(out, text[used]);
      if (out.size() > room) break;
    }
    // Back to the start of a UTF-8 character: at most 3 continuation bytes (more is not UTF-8 anyway).
    for (int back = 0; back < 3 && used > 0 && (static_cast<unsigned char>(text[used]) & 0xc0) == 0x80; ++back)
      --used;
    out.clear();
    for (size_t i = 0; i < used; ++i) append_escaped(out, text[i]);
    return out + "... (" + std::to_string(text.size() - used) + " more bytes)";
  }

 private:
  // A control byte as an escape (\n, \t, \xHH); any other byte as it is.
  static void append_escaped(std::string& out, char c) {
    static const char* const kHex = "0123456789abcdef";
    const auto byte = static_cast<unsigned char>(c);
    if (byte == '\n') {
      out += "\\n";
    } else if (byte == '\t') {
      out += "\\t";
    } else if (byte < 0x20 || byte == 0x7f) {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 15];
    } else {
      out += c;
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
};

}  // namespace anvil
