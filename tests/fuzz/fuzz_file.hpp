// The fuzz input as a file, for readers that only read files: a new file each
// time, as rewriting in place a file that was just mapped stalls on its
// writeback (about 2 ms on ext4), which would cut the executions per second
// fivefold. The file is removed when the object goes out of scope, so a run
// leaves nothing in /tmp.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

class FuzzInputFile {
 public:
  FuzzInputFile(const char* name, const uint8_t* data, size_t size)
      : path_("/tmp/anvil_fuzz_" + std::string(name) + "_" + std::to_string(::getpid()) + ".safetensors") {
    std::FILE* f = std::fopen(path_.c_str(), "wb");
    if (f == nullptr) return;
    written_ = std::fwrite(data, 1, size, f) == size;
    written_ = std::fclose(f) == 0 && written_;
  }
  ~FuzzInputFile() { std::remove(path_.c_str()); }
  FuzzInputFile(const FuzzInputFile&) = delete;
  FuzzInputFile& operator=(const FuzzInputFile&) = delete;

  // The path, or "" when the file could not be written.
  std::string path() const { return written_ ? path_ : ""; }

 private:
  std::string path_;
  bool written_ = false;
};
