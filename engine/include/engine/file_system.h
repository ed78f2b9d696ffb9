// The engine's only door to the disk. Every byte the engine reads or writes goes
// through a FileSystem, so tests can substitute one that drops unsynced data,
// fails writes or tears records (tests/engine/fault_injection_file_system.h).
//
// Thread-safety: a FileSystem is safe to use from many threads. A WritableFile
// has one writer at a time (the owner serialises Append/Close), and Read of
// bytes already appended may run concurrently with Append. Sync and
// StartWriteback may run on another thread, concurrently with Append and
// Read, but never with each other or with Close (the owner serialises them). A ReadableFile is
// immutable and safe to read from any thread.
#ifndef LOGKV_ENGINE_FILE_SYSTEM_H_
#define LOGKV_ENGINE_FILE_SYSTEM_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include "absl/strings/string_view.h"
#include <string>

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace logkv::engine {

// An append-only file with a fixed capacity reserved up front. Appended bytes
// are in the operating system's hands (page cache) when Append returns, so a
// killed process loses nothing; Sync makes them survive a machine crash.
class WritableFile {
 public:
  virtual ~WritableFile() = default;

  // REQUIRES: Size() + data.size() <= Capacity().
  [[nodiscard]] virtual absl::Status Append(absl::string_view data) = 0;

  // Reads bytes [offset, offset + n) that were appended earlier. The view points
  // either into the file's mapping (valid until Close) or into scratch, which
  // must hold n bytes and outlive the view.
  [[nodiscard]] virtual absl::StatusOr<absl::string_view> Read(uint64_t offset, size_t n,
                                                              char* scratch) const = 0;

  // Makes every appended byte durable (fdatasync).
  [[nodiscard]] virtual absl::Status Sync() = 0;

  // Asks the kernel to start writing back appended bytes without waiting, so
  // a later Sync has less to do. Best effort.
  virtual void StartWriteback() {}

  // Readies the next `bytes` of appends (up to Capacity()): their disk blocks
  // reserved and their pages in memory and writable, so that Append then only
  // copies (no allocation, no page fault). For a writer that appends under a
  // lock others wait for and can prepare before taking it. Best effort: a
  // reservation that fails here fails again, and is reported, in Append.
  // REQUIRES: the appends' one writer calls it.
  virtual void Prepare(uint64_t /*bytes*/) {}

  // Trims the reservation to Size() and closes. Does not sync.
  [[nodiscard]] virtual absl::Status Close() = 0;

  virtual uint64_t Size() const = 0;
  virtual uint64_t Capacity() const = 0;
  // Bytes from the start that hold disk blocks (preallocated ahead of the
  // data); Size() where nothing is reserved ahead.
  virtual uint64_t Reserved() const { return Size(); }
};

// An immutable file opened for reading.
class ReadableFile {
 public:
  virtual ~ReadableFile() = default;

  // Same contract as WritableFile::Read. Reading past Size() is OutOfRange.
  [[nodiscard]] virtual absl::StatusOr<absl::string_view> Read(uint64_t offset, size_t n,
                                                              char* scratch) const = 0;
  virtual uint64_t Size() const = 0;
  // The first range at or after offset whose bytes may not all be zeros, as
  // [*begin, *end); *begin == Size() when only zeros follow. What the file
  // system holds no data for (holes, blocks reserved and never written) reads
  // as zeros, and a reader that only wants to know that need not read it. The
  // default knows nothing: [offset, Size()).
  virtual void NextData(uint64_t offset, uint64_t* begin, uint64_t* end) const {
    *begin = offset < Size() ? offset : Size();
    *end = Size();
  }
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  // Creates (or truncates) path and reserves capacity_bytes for appends. On
  // failure no file is left at path. A full disk is NoSpaceError (engine.h).
  [[nodiscard]] virtual absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(
      const std::string& path, uint64_t capacity_bytes) = 0;
  [[nodiscard]] virtual absl::StatusOr<std::unique_ptr<ReadableFile>> NewReadableFile(
      const std::string& path) = 0;
  // Opens the existing file at path for appends after its content: Size() is
  // the file's size, and capacity_bytes (more than that) what it may grow to.
  // A shard continues its newest segment this way after a restart instead of
  // starting one more. On failure the file is as it was. The default refuses
  // (Unimplemented); the engine then starts a new file instead.
  [[nodiscard]] virtual absl::StatusOr<std::unique_ptr<WritableFile>> ReopenWritableFile(
      const std::string& path, uint64_t capacity_bytes);

  // Writes data to path, replacing it, and syncs the file if sync is set.
  [[nodiscard]] virtual absl::Status WriteFile(const std::string& path, absl::string_view data,
                                               bool sync) = 0;
  [[nodiscard]] virtual absl::StatusOr<std::string> ReadFile(const std::string& path) = 0;

  [[nodiscard]] virtual absl::Status CreateDir(const std::string& path) = 0;
  // Names (not paths) of the entries of a directory, in no particular order.
  [[nodiscard]] virtual absl::StatusOr<std::vector<std::string>> ListDir(
      const std::string& path) = 0;
  [[nodiscard]] virtual absl::Status RemoveFile(const std::string& path) = 0;
  [[nodiscard]] virtual absl::Status RenameFile(const std::string& from,
                                                const std::string& to) = 0;
  [[nodiscard]] virtual absl::Status TruncateFile(const std::string& path, uint64_t size) = 0;
  [[nodiscard]] virtual absl::StatusOr<uint64_t> FileSize(const std::string& path) = 0;
  virtual bool FileExists(const std::string& path) = 0;
  // Makes the directory's entries (creations, renames, removals) durable.
  [[nodiscard]] virtual absl::Status SyncDir(const std::string& path) = 0;
  // Makes the data of an existing file durable (fdatasync), whoever wrote
  // it: a shard syncs what a killed process may have left in the page cache.
  [[nodiscard]] virtual absl::Status SyncFile(const std::string& path) = 0;

  // Takes an exclusive advisory lock on path (created if missing), held until
  // the returned object is destroyed. Fails with FailedPrecondition if another
  // process holds it.
  class Lock {
   public:
    virtual ~Lock() = default;
  };
  [[nodiscard]] virtual absl::StatusOr<std::unique_ptr<Lock>> LockFile(
      const std::string& path) = 0;
};

// status with context put in front of its message; its code and payloads
// (the mark of NoSpaceError) are kept.
[[nodiscard]] absl::Status WithContext(absl::string_view context, const absl::Status& status);

// The real file system: segments are mmap'd (MAP_SHARED) and preallocated with
// fallocate, so an Append is a memcpy with no system call. The returned object
// lives for the whole process.
FileSystem* DefaultFileSystem();

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_FILE_SYSTEM_H_
