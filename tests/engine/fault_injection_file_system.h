// A FileSystem for tests that simulates a machine crash and failing disks, in
// the manner of leveldb's db/fault_injection_test.cc. It wraps a real
// FileSystem and remembers, for every file written through it, how many bytes
// are known to be durable (synced). A test then:
//
//   1. runs an engine on it;
//   2. calls SetActive(false): the "machine" is dead, every later mutation is
//      acknowledged but does nothing, so nothing the engine does while it is
//      being torn down reaches the disk;
//   3. destroys the engine (which releases every file);
//   4. calls DropUnsyncedData() (and, to model lost directory entries,
//      RemoveFilesCreatedAfterLastDirSync()): the disk now holds what a real
//      machine would have after the crash;
//   5. calls SetActive(true) and reopens the engine.
//
// What counts as durable:
//   * WritableFile: bytes appended before a successful Sync() began.
//   * WriteFile(sync = true): the whole new content; WriteFile(sync = false):
//     nothing (the file's old content is not restored: a crash loses both).
//   * RenameFile moves the record of a file to its new name; RemoveFile and
//     TruncateFile are durable at once (optimistic, as in leveldb).
//   * A file's directory entry is durable once SyncDir of its directory ran
//     after the file was created or renamed into it. A rename over an existing
//     entry keeps that entry durable (a crash then leaves one of the two
//     versions; this model keeps the newer).
//   * Directories (CreateDir) are not modelled: they always survive.
//   * Files the wrapper never saw written (those that existed before it) are
//     never touched.
//
// Close while inactive still closes the base file: the real WritableFile keeps
// an mmap and a descriptor that must be released, and its Close trims the
// preallocated file to the bytes appended while the machine was alive. That
// leaves the file longer than its synced size, which DropUnsyncedData then
// trims, so the end state is the same as if Close had done nothing.
//
// Thread-safety: every method may be called from any thread. SetActive is a
// clean cut: it waits for mutations in flight, and none starts after it
// returns. DropUnsyncedData and RemoveFilesCreatedAfterLastDirSync require that
// no file written through this object is still open.
#ifndef LOGKV_TESTS_ENGINE_FAULT_INJECTION_FILE_SYSTEM_H_
#define LOGKV_TESTS_ENGINE_FAULT_INJECTION_FILE_SYSTEM_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "engine/file_system.h"

namespace logkv::test {

class FaultInjectionFileSystem final : public engine::FileSystem {
 public:
  // What the wrapper knows about one file written through it. Shared between
  // the file system's table and open writers so a rename while open is safe.
  struct FileState {
    uint64_t size_bytes = 0;     // bytes that reached the base file system
    uint64_t synced_bytes = 0;   // of those, bytes known to be durable
    bool ever_synced = false;    // a sync (possibly of 0 bytes) completed
    bool entry_durable = false;  // the directory entry survives a crash
    int open_writers = 0;        // WritableFiles not yet closed
  };

  // base must outlive this object.
  explicit FaultInjectionFileSystem(engine::FileSystem* base);
  FaultInjectionFileSystem(const FaultInjectionFileSystem&) = delete;
  FaultInjectionFileSystem& operator=(const FaultInjectionFileSystem&) = delete;
  ~FaultInjectionFileSystem() override;

  // ---- Fault controls --------------------------------------------------------

  // false simulates a dead machine: Append, Sync, StartWriteback, Close (see
  // above), WriteFile, CreateDir, RemoveFile, RenameFile, TruncateFile and
  // SyncDir return OK and change nothing on disk; NewWritableFile returns a
  // file that exists only in memory. Reads still reach the disk.
  void SetActive(bool active);
  bool IsActive() const;

  // Truncates every tracked file to its synced size; a file never synced is
  // removed. Returns FailedPrecondition if a tracked file is still open.
  [[nodiscard]] absl::Status DropUnsyncedData();
  // Removes tracked files whose directory entry was not made durable by
  // SyncDir. Returns FailedPrecondition if a tracked file is still open.
  [[nodiscard]] absl::Status RemoveFilesCreatedAfterLastDirSync();

  // After n more successful calls of Append, Sync or WriteFile, every further
  // call of them fails (until ClearFailures). n = 0 fails the next call. absl
  // has no IOError code; the failure is InternalError, the code the real file
  // system gives EIO, with "injected" in its message.
  void FailWritesAfter(int n);
  void ClearFailures();

  // true simulates a full disk (ENOSPC): NewWritableFile and WriteFile fail
  // with engine::NoSpaceError naming the path and, like the real file system
  // whose reservation fails, leave no file behind. Appends into space already
  // reserved, syncs, renames and removals still succeed, as they do on a
  // full disk. false: space was freed.
  void SetDiskFull(bool full);

  // true: ReopenWritableFile is Unimplemented, as on a file system that
  // cannot reopen files (the engine then starts a new file instead).
  void SetReopenUnsupported(bool unsupported);

  // true: SyncFile fails (InternalError, "injected"), as on a failing disk.
  void SetSyncFileFails(bool fails);

  // ---- Observation -------------------------------------------------------------

  uint64_t append_count() const;       // successful WritableFile::Append calls
  uint64_t sync_count() const;         // successful WritableFile::Sync calls
  uint64_t file_sync_count() const;    // successful WriteFile calls with sync = true
  uint64_t dir_sync_count() const;     // successful SyncDir calls
  uint64_t writeback_count() const;    // WritableFile::StartWriteback calls while active
  uint64_t injected_failures() const;  // calls failed by FailWritesAfter
  uint64_t refused_creations() const;  // NewWritableFile and WriteFile calls failed by SetDiskFull
  void ResetCounters();

  // The tracked state of path (normalised), if the wrapper has seen it written.
  std::optional<FileState> GetFileState(const std::string& path) const;
  // Normalised paths of every tracked file, sorted.
  std::vector<std::string> TrackedFiles() const;

  // ---- FileSystem ----------------------------------------------------------------

  absl::StatusOr<std::unique_ptr<engine::WritableFile>> NewWritableFile(
      const std::string& path, uint64_t capacity_bytes) override;
  // Reopening keeps the file's record (what of it is synced, whether its
  // entry is durable); a file the wrapper never saw written counts as synced
  // and durable as it is. While inactive it fails (Unavailable).
  absl::StatusOr<std::unique_ptr<engine::WritableFile>> ReopenWritableFile(
      const std::string& path, uint64_t capacity_bytes) override;
  absl::StatusOr<std::unique_ptr<engine::ReadableFile>> NewReadableFile(
      const std::string& path) override;
  absl::Status WriteFile(const std::string& path, absl::string_view data, bool sync) override;
  absl::StatusOr<std::string> ReadFile(const std::string& path) override;
  absl::Status CreateDir(const std::string& path) override;
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) override;
  absl::Status RemoveFile(const std::string& path) override;
  absl::Status RenameFile(const std::string& from, const std::string& to) override;
  absl::Status TruncateFile(const std::string& path, uint64_t size) override;
  absl::StatusOr<uint64_t> FileSize(const std::string& path) override;
  // Every byte of a tracked file on disk becomes durable; an untracked file
  // already counts as durable. Counted in sync_count; FailWritesAfter fails
  // it as it fails a WritableFile's Sync.
  absl::Status SyncFile(const std::string& path) override;
  bool FileExists(const std::string& path) override;
  absl::Status SyncDir(const std::string& path) override;
  absl::StatusOr<std::unique_ptr<Lock>> LockFile(const std::string& path) override;

 private:
  class FaultInjectionWritableFile;
  friend class FaultInjectionWritableFile;

  // Lexically normal, without a trailing slash, so that differently spelt
  // paths of one file share one record.
  static std::string Normalize(const std::string& path);
  static std::string ParentOf(const std::string& normalized_path);

  // Consumes one call of the failure budget: an IOError naming operation and
  // path if the call is to fail, OK otherwise.
  absl::Status MaybeInjectFailure(const char* operation, const std::string& path)
      ABSL_LOCKS_EXCLUDED(state_mu_);
  // NoSpaceError naming operation and path while the disk is full, else OK.
  absl::Status CheckSpace(const char* operation, const std::string& path)
      ABSL_LOCKS_EXCLUDED(state_mu_);

  // Called by open writers.
  void RecordAppend(const std::shared_ptr<FileState>& state, uint64_t appended_bytes);
  void RecordSync(const std::shared_ptr<FileState>& state, uint64_t synced_size);
  void RecordClose(const std::shared_ptr<FileState>& state);
  uint64_t AppendedBytes(const std::shared_ptr<FileState>& state) const;

  // Returns FailedPrecondition naming the first tracked file still open.
  absl::Status CheckNoOpenFiles() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_mu_);

  // Constant after construction.
  engine::FileSystem* const base_;

  // Held shared by every mutation for its whole duration (so "active" cannot
  // change under it) and exclusively by SetActive and the Drop/Remove calls.
  mutable absl::Mutex active_mu_ ABSL_ACQUIRED_BEFORE(state_mu_);
  bool active_ ABSL_GUARDED_BY(active_mu_) = true;

  mutable absl::Mutex state_mu_;
  std::map<std::string, std::shared_ptr<FileState>> files_ ABSL_GUARDED_BY(state_mu_);
  bool fail_enabled_ ABSL_GUARDED_BY(state_mu_) = false;
  int64_t calls_before_failure_ ABSL_GUARDED_BY(state_mu_) = 0;
  uint64_t append_count_ ABSL_GUARDED_BY(state_mu_) = 0;
  uint64_t sync_count_ ABSL_GUARDED_BY(state_mu_) = 0;
  uint64_t file_sync_count_ ABSL_GUARDED_BY(state_mu_) = 0;
  uint64_t dir_sync_count_ ABSL_GUARDED_BY(state_mu_) = 0;
  uint64_t writeback_count_ ABSL_GUARDED_BY(state_mu_) = 0;
  uint64_t injected_failures_ ABSL_GUARDED_BY(state_mu_) = 0;
  bool disk_full_ ABSL_GUARDED_BY(state_mu_) = false;
  bool reopen_unsupported_ ABSL_GUARDED_BY(state_mu_) = false;
  bool sync_file_fails_ ABSL_GUARDED_BY(state_mu_) = false;
  uint64_t refused_creations_ ABSL_GUARDED_BY(state_mu_) = 0;
};

}  // namespace logkv::test

#endif  // LOGKV_TESTS_ENGINE_FAULT_INJECTION_FILE_SYSTEM_H_
