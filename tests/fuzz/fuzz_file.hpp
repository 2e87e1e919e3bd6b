// The fuzz input as a file, for readers that only read files: a new file each
// time, as rewriting in place a file that was just mapped stalls on its
// writeback (about 2 ms on ext4), which would cut the executions per second
// fivefold. Returns the path, or "" when the file could not be written.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

inline std::string fuzz_input_file(const char* name, const uint8_t* data, size_t size) {
  const std::string path = "/tmp/anvil_fuzz_" + std::string(name) + "_" + std::to_string(::getpid()) + ".safetensors";
  std::remove(path.c_str());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return "";
  const bool written = std::fwrite(data, 1, size, f) == size;
  std::fclose(f);
  return written ? path : "";
}
