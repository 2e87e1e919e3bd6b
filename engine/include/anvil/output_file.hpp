// The one way anvil writes a file (tensors, checkpoints, bench --json): the
// destination holds either its old contents or the complete new ones, never
// a part. The bytes go to a temporary file in the same directory (a short
// name, so a long destination name still fits), which takes the
// destination's permissions when it exists; it is flushed to disk, renamed
// over the destination, and the directory is flushed too. On any error the
// temporary is removed, the destination is untouched, and anvil::Error names
// the path and the reason (a full disk: "No space left on device").
//
// A symlink is followed to its target (a dangling one names the file to
// create), so the link stays. A character device or FIFO (/dev/null, a pipe)
// is written into, never replaced; a directory, a block device or a socket is
// refused. An output that must be a file (a checkpoint) is checked with
// check_output_is_a_file, which refuses a device or FIFO too.
//
// A signal from outside whose default action ends the process (SIGHUP,
// SIGINT, SIGQUIT, SIGTERM, SIGPIPE, SIGALRM, SIGUSR1, SIGUSR2, SIGXCPU,
// SIGVTALRM, SIGPROF) during a write, in a program that leaves it at its
// default, removes the temporary file and then ends the process as the signal
// would (128 + the signal, to a shell): the handlers are installed for the
// write only and the default restored after. A program with its own handlers
// (or that ignores them) keeps them, and the write completes. SIGKILL cannot
// be caught: it leaves the temporary file (.anvil-XXXXXX), never a part of
// the destination. A write past the file size limit (ulimit -f) is an Error
// ("File too large") rather than the end of the process by SIGXFSZ, unless
// the program handles that signal itself.
//
// Writes in one process take turns; a writer that starts another
// write_output_file is refused with an Error (it would wait on itself). An
// existing destination is refused, not replaced, where it is another user's
// that this process may not write, someone else's in a sticky directory, or
// our own made read-only by hand (without the owner's write permission that
// the umask would give a new file).
#pragma once

#include <cstdio>
#include <functional>
#include <string>

namespace anvil {

// Throws InputError where `path` holds a NUL byte: the system calls would take
// the text before it, another file. Each function here, and each reader of a
// file (networks, tensor files), checks its path with it.
void check_path_text(const std::string& path);

// write(file) writes the contents and returns false on a failed write; an
// exception it throws comes out of write_output_file, the temporary removed.
void write_output_file(const std::string& path, const std::function<bool(std::FILE*)>& write);

// Where a write to `path` lands: the end of its chain of symlinks (`path`
// itself where that end is a character device or a FIFO).
std::string output_target(const std::string& path);

// What a write does to a target: replaces a file (new or regular) by rename,
// writes into a character device or FIFO in place, or is refused, and why ("a
// directory", "a block device", "a socket").
struct OutputKind {
  bool in_place = false;
  const char* refused = nullptr;
};
OutputKind output_kind(const std::string& target);

// The directory of a target: where its temporary file goes.
std::string output_directory(const std::string& target);

// Throws InputError naming `path` where a write there would fail for a reason
// known before any work: it is a directory, block device or socket, its links
// loop, its directory does not exist or cannot be written, its name is too
// long, it is refused as above (read-only, another user's), or no file can
// be made in its directory (one deleted while current, /proc: it makes and
// removes a .anvil-XXXXXX file to know, in a write's turn). Whether to write through a
// symlink or a device is the caller's call.
void check_output_path(const std::string& path);

// For an output that must be a regular file, written whole to a temporary file and renamed over
// the destination: a checkpoint, which a run rewrites and --resume reads back, or `anvil train
// --save`. Throws InputError naming `path` where it leads (itself or through symlinks) to a
// character device or a pipe or FIFO (/dev/null, /dev/tty, /dev/stdout), which write_output_file
// would write into in place, never atomically; `what` names the output in the message ("a
// checkpoint"). It looks at the path alone: check_output_path checks the rest.
void check_output_is_a_file(const std::string& path, const std::string& what);

// Equal for two paths that name one file: an existing file by device and inode
// (hard links and symlinks alike), a new name by its directory's device and
// inode and its name (whatever the current directory, symlinks and '..'
// included); where even the directory does not exist, by its absolute path.
std::string same_file_key(const std::string& path);

// A file an engine read (a network, a dataset), as it was then: an output
// replaces it if the output is the same inode as then, or what the path named
// then (absolute, so a later chdir does not move it) names now (a file put in
// its place by rename since).
struct InputFile {
  std::string absolute;  // when read (as given where it cannot be made absolute), for messages
  std::string key;       // same_file_key when read
  static InputFile read_now(const std::string& path);
  // Whether writing output_path (through output_target) would replace this file; never for
  // InputFile{}, no file (a network parsed from text).
  bool replaced_by(const std::string& output_path) const;
};

}  // namespace anvil
