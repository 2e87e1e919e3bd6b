// libFuzzer harness: any bytes as a safetensors file. Every input must end in
// a read file or an anvil::InputError; a crash, an abort, a sanitizer report
// or any other exception is a bug. The bytes go through a real file, as the
// reader only reads files.
#include <cstddef>
#include <cstdint>
#include <string>

#include "anvil/error.hpp"
#include "anvil/safetensors.hpp"
#include "fuzz_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const FuzzInputFile file("safetensors", data, size);
  const std::string path = file.path();
  if (path.empty()) return 0;
  try {
    (void)anvil::read_safetensors(path);
  } catch (const anvil::InputError&) {
  }
  return 0;
}
