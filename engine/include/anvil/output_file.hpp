// The one way anvil writes a file (tensors, checkpoints, bench --json): the
// destination holds either its old contents or the complete new ones, never
// a part. The bytes go to a temporary file in the same directory (a short
// name, so a long destination name still fits), which takes the
// destination's permissions when it exists; it is flushed to disk, renamed
// over the destination, and the directory is flushed too. On any error the
// temporary is removed, the destination is untouched, and anvil::Error names
// the path and the reason (a full disk: "No space left on device").
#pragma once

#include <cstdio>
#include <functional>
#include <string>

namespace anvil {

// write(file) writes the contents and returns false on a failed write.
void write_output_file(const std::string& path, const std::function<bool(std::FILE*)>& write);

}  // namespace anvil
