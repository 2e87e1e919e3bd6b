// How much host memory an arena may take: what the host has available, and,
// inside a container, what its memory cgroup allows.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

namespace anvil {

// The least of the host's MemAvailable (/proc/meminfo; else the free pages)
// and cgroup_available_memory("/sys/fs/cgroup").
size_t host_available_memory();

// Where `bytes` exceed host_available_memory(), why, for a message about what
// needs them: "X GiB, more than the Y GiB of host memory available".
std::optional<std::string> beyond_host_memory(size_t bytes);

// In a memory cgroup with a limit (a container): the limit less what the
// cgroup uses beyond its reclaimable page cache, read below `root` (v2:
// memory.max, memory.current and memory.stat's inactive_file; v1:
// memory/memory.limit_in_bytes, memory/memory.usage_in_bytes and
// memory/memory.stat's total_inactive_file). None without a limit or the files.
std::optional<size_t> cgroup_available_memory(const std::string& root);

}  // namespace anvil
