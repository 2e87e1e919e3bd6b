// How much host memory an arena may take: what the host has available, and,
// inside a container, what its memory cgroup allows, and under ulimit -v what
// the address-space limit leaves.
#pragma once

#include <cstddef>
#include <mutex>
#include <optional>
#include <string>

namespace anvil {

// The least of the host's MemAvailable (/proc/meminfo; else the free pages),
// cgroup_available_memory("/sys/fs/cgroup", "/proc/self/cgroup") and, under
// an address-space limit (ulimit -v), that limit less what the process maps.
size_t host_available_memory();

// What a document being parsed (a network, a tensor header) may take:
// host_available_memory(), but never below 64 MiB, so that a small document is
// not refused for a reading of next to no memory free.
size_t parse_memory_budget();

// Where `bytes` exceed host_available_memory(), why, for a message about what
// needs them: "X GiB, more than the Y GiB of host memory available".
std::optional<std::string> beyond_host_memory(size_t bytes);
// Below this, host copies are made unchecked: reading the host's memory figures
// for each would cost more than such a copy risks.
constexpr size_t kUncheckedHostBytes = size_t(64) << 20;

// Held around a check of host memory and the allocation and first write it
// allows, so that the data-parallel ranks of one process, built and fed
// together, each see what the others took (written, it is no longer available).
std::mutex& host_memory_turn();

// In memory cgroups with limits (a container, systemd-run, a batch job): the
// least, over the process's cgroup and each of its ancestors (self_cgroup,
// /proc/self/cgroup's format, names them; "/" alone without it), of the
// limit less what that cgroup uses beyond its reclaimable page cache. Read
// below `root`: v2's memory.max, memory.current and memory.stat's
// inactive_file in root/<path>; v1's memory.limit_in_bytes,
// memory.usage_in_bytes and memory.stat's total_inactive_file in
// root/memory/<path>. None without a limit or the files.
std::optional<size_t> cgroup_available_memory(const std::string& root, const std::string& self_cgroup);

}  // namespace anvil
