// libFuzzer harness: any bytes as a dataset for tests/data/dataset_epochs.json
// (samples (2, 6, 6), targets (3, 3, 3), the shapes of the stored
// dataset_epochs_*.safetensors seeds). Every input must end in a loaded dataset
// or an anvil::InputError; a crash, an abort, a sanitizer report or any other
// exception is a bug. The bytes go through a real file, as the reader only
// reads files; a loaded dataset has its first and last samples gathered.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "anvil/dataset.hpp"
#include "anvil/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/anvil_fuzz_dataset_" + std::to_string(::getpid()) + ".safetensors";
  // A new file each time: rewriting a file in place that was just mapped stalls on its
  // writeback (about 2 ms on ext4), which would cut the executions per second fivefold.
  std::remove(path.c_str());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  const bool written = std::fwrite(data, 1, size, f) == size;
  std::fclose(f);
  if (!written) return 0;
  try {
    const anvil::Dataset dataset = anvil::Dataset::load(path, {2, 6, 6}, {3, 3, 3});
    const std::vector<int64_t> ends = {0, dataset.size() - 1};
    (void)dataset.input_batch(ends);
    (void)dataset.target_batch(ends);
  } catch (const anvil::InputError&) {
  }
  return 0;
}
