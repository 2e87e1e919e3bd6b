#include "engine/src/run/host_memory.hpp"

#include "anvil/plan.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

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

// The value of `key` in a "key value" per line file (memory.stat, /proc/meminfo, /proc/self/status,
// whose other lines may hold text); none without it.
std::optional<unsigned long long> read_key(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string line, name;
  unsigned long long value = 0;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    if (fields >> name && name == key && fields >> value) return value;
  }
  return std::nullopt;
}

// Under an address-space limit (ulimit -v, RLIMIT_AS): the limit less the process's mapped size
// (/proc/self/status's VmSize), which each new mapping adds to; none without a limit. Allocations
// past it fail, in places a std::bad_alloc cannot be caught (a JSON tree's destructor).
std::optional<size_t> address_space_available() {
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_AS, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return std::nullopt;
  const unsigned long long mapped = read_key("/proc/self/status", "VmSize:").value_or(0) << 10;
  return size_t(limit.rlim_cur > mapped ? limit.rlim_cur - mapped : 0);
}

// A cgroup layout's files in one cgroup's directory.
struct Layout {
  std::string limit, usage, stat, inactive;
};
const Layout kV2{"/memory.max", "/memory.current", "/memory.stat", "inactive_file"};
const Layout kV1{"/memory.limit_in_bytes", "/memory.usage_in_bytes", "/memory.stat", "total_inactive_file"};

// What one cgroup's directory allows: its limit less its use beyond the reclaimable page cache.
std::optional<size_t> cgroup_level_available(const std::string& dir, const Layout& l) {
  const auto limit = read_number(dir + l.limit), usage = read_number(dir + l.usage);
  if (!limit || !usage) return std::nullopt;
  const unsigned long long reclaimable = std::min(*usage, read_key(dir + l.stat, l.inactive).value_or(0));
  const unsigned long long used = *usage - reclaimable;
  return size_t(*limit > used ? *limit - used : 0);
}

// The process's cgroup in each hierarchy, from self_cgroup's "id:controllers:path" lines:
// v2's ("0::path") and v1's memory controller's; "/" where the file names none, or a path with
// ".." (a cgroup outside this cgroup namespace's root: nothing below `root` describes it).
std::pair<std::string, std::string> own_cgroups(const std::string& self_cgroup) {
  std::string v2 = "/", v1 = "/", line;
  std::ifstream in(self_cgroup);
  while (std::getline(in, line)) {
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos || line.compare(b + 1, 1, "/") != 0) continue;
    const std::string controllers = "," + line.substr(a + 1, b - a - 1) + ",";
    std::string path = line.substr(b + 1);
    if ((path + "/").find("/../") != std::string::npos) path = "/";
    if (line.compare(0, a, "0") == 0 && controllers == ",,") v2 = path;
    if (controllers.find(",memory,") != std::string::npos) v1 = path;
  }
  return {v2, v1};
}

}  // namespace

std::optional<size_t> cgroup_available_memory(const std::string& root, const std::string& self_cgroup) {
  const auto [v2, v1] = own_cgroups(self_cgroup);
  std::optional<size_t> least;
  // Each ancestor's limit binds too (a container without a cgroup namespace, systemd-run, Slurm).
  auto walk_up = [&](const std::string& base, std::string path, const Layout& layout) {
    while (true) {
      if (const auto level = cgroup_level_available(base + (path == "/" ? "" : path), layout))
        least = std::min(least.value_or(*level), *level);
      if (path == "/") return;
      path = path.substr(0, std::max<size_t>(path.rfind('/'), 1));
    }
  };
  walk_up(root, v2, kV2);
  walk_up(root + "/memory", v1, kV1);
  return least;
}

size_t host_available_memory() {
  const auto kib = read_key("/proc/meminfo", "MemAvailable:");
  size_t available = kib ? size_t(*kib) << 10 : size_t(::sysconf(_SC_AVPHYS_PAGES)) * size_t(::sysconf(_SC_PAGESIZE));
  if (const auto cgroup = cgroup_available_memory("/sys/fs/cgroup", "/proc/self/cgroup"))
    available = std::min(available, *cgroup);
  if (const auto address_space = address_space_available()) available = std::min(available, *address_space);
  return available;
}

std::mutex& host_memory_turn() {
  static std::mutex turn;
  return turn;
}

size_t parse_memory_budget() { return std::max(host_available_memory(), size_t(64) << 20); }

std::optional<std::string> beyond_host_memory(size_t bytes) {
  const size_t available = host_available_memory();
  if (bytes <= available) return std::nullopt;
  return gib(bytes) + ", more than the " + gib(available) + " of host memory available";
}

}  // namespace anvil
