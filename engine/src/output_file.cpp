#include "anvil/output_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "anvil/error.hpp"

namespace anvil {

namespace {

std::string directory_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// The permissions a new file gets: 0666 less the umask (read without changing it for long).
mode_t new_file_mode() {
  const mode_t mask = ::umask(0);
  ::umask(mask);
  return 0666 & ~mask;
}

}  // namespace

void write_output_file(const std::string& path, const std::function<bool(std::FILE*)>& write) {
  const std::string dir = directory_of(path);
  std::string tmp = dir + "/.anvil-XXXXXX";
  std::vector<char> name(tmp.begin(), tmp.end());
  name.push_back('\0');
  const int fd = ::mkstemp(name.data());
  if (fd < 0) throw Error(path + ": cannot write: " + std::strerror(errno));
  tmp = name.data();
  struct stat old {};
  const mode_t mode = ::stat(path.c_str(), &old) == 0 ? (old.st_mode & 07777) : new_file_mode();
  std::FILE* f = ::fdopen(fd, "wb");
  bool ok = f != nullptr && ::fchmod(fd, mode) == 0;
  int err = ok ? 0 : errno;
  if (ok) {
    errno = 0;
    ok = write(f) && std::fflush(f) == 0 && ::fsync(fd) == 0;  // on disk before the rename
    err = ok ? 0 : errno;
  }
  if (f != nullptr ? std::fclose(f) != 0 : ::close(fd) != 0) {
    if (ok) err = errno;
    ok = false;
  }
  if (ok && std::rename(tmp.c_str(), path.c_str()) != 0) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    throw Error(path + ": cannot write: " + std::strerror(err ? err : EIO));
  }
  // The rename itself on disk: flush the directory (best effort: some file systems refuse).
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace anvil
