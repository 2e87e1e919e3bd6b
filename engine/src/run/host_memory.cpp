#include "engine/src/run/host_memory.hpp"

#include "anvil/plan.hpp"

#include <unistd.h>

#include <algorithm>
#include <fstream>

namespace anvil {

namespace {

// The first line of a file as an unsigned number; none for "max", a missing file or other text.
std::optional<unsigned long long> read_number(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text) || text.empty() || text.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  try {
    return std::stoull(text);
  } catch (const std::out_of_range&) {
    return std::nullopt;
  }
}

// The value of `key` in a "key value" per line file (memory.stat, /proc/meminfo); none without it.
std::optional<unsigned long long> read_key(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string name;
  unsigned long long value = 0;
  while (in >> name >> value) {
    if (name == key) return value;
    in.ignore(256, '\n');
  }
  return std::nullopt;
}

}  // namespace

std::optional<size_t> cgroup_available_memory(const std::string& root) {
  struct Layout {
    std::string limit, usage, stat, inactive;
  };
  for (const Layout& l : {Layout{"/memory.max", "/memory.current", "/memory.stat", "inactive_file"},
                          Layout{"/memory/memory.limit_in_bytes", "/memory/memory.usage_in_bytes",
                                 "/memory/memory.stat", "total_inactive_file"}}) {
    const auto limit = read_number(root + l.limit), usage = read_number(root + l.usage);
    if (!limit || !usage) continue;
    const unsigned long long reclaimable = std::min(*usage, read_key(root + l.stat, l.inactive).value_or(0));
    const unsigned long long used = *usage - reclaimable;
    return size_t(*limit > used ? *limit - used : 0);
  }
  return std::nullopt;
}

size_t host_available_memory() {
  const auto kib = read_key("/proc/meminfo", "MemAvailable:");
  size_t available = kib ? size_t(*kib) << 10 : size_t(::sysconf(_SC_AVPHYS_PAGES)) * size_t(::sysconf(_SC_PAGESIZE));
  if (const auto cgroup = cgroup_available_memory("/sys/fs/cgroup")) available = std::min(available, *cgroup);
  return available;
}

std::optional<std::string> beyond_host_memory(size_t bytes) {
  const size_t available = host_available_memory();
  if (bytes <= available) return std::nullopt;
  return gib(bytes) + ", more than the " + gib(available) + " of host memory available";
}

}  // namespace anvil
