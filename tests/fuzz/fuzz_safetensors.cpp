// libFuzzer harness: any bytes as a safetensors file. Every input must end in
// a read file or an anvil::InputError; a crash, an abort, a sanitizer report
// or any other exception is a bug. The bytes go through a real file, as the
// reader only reads files.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "anvil/error.hpp"
#include "anvil/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/anvil_fuzz_" + std::to_string(::getpid()) + ".safetensors";
  // A new file each time: rewriting a file in place that was just mapped stalls on its
  // writeback (about 2 ms on ext4), which would cut the executions per second fivefold.
  std::remove(path.c_str());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  const bool written = std::fwrite(data, 1, size, f) == size;
  std::fclose(f);
  if (!written) return 0;
  try {
    (void)anvil::read_safetensors(path);
  } catch (const anvil::InputError&) {
  }
  return 0;
}
