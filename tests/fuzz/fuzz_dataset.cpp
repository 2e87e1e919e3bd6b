// libFuzzer harness: any bytes as a dataset for tests/data/dataset_epochs.json
// (samples (2, 6, 6), targets (3, 3, 3), the shapes of the stored
// dataset_epochs_*.safetensors seeds). Every input must end in a loaded dataset
// or an anvil::InputError; a crash, an abort, a sanitizer report or any other
// exception is a bug. The bytes go through a real file, as the reader only
// reads files; a loaded dataset has its first and last samples gathered.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "anvil/dataset.hpp"
#include "anvil/error.hpp"
#include "fuzz_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const FuzzInputFile file("dataset", data, size);
  const std::string path = file.path();
  if (path.empty()) return 0;
  try {
    const anvil::Dataset dataset = anvil::Dataset::load(path, {2, 6, 6}, {3, 3, 3});
    const std::vector<int64_t> ends = {0, dataset.size() - 1};
    (void)dataset.input_batch(ends);
    (void)dataset.target_batch(ends);
  } catch (const anvil::InputError&) {
  }
  return 0;
}
