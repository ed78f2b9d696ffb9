// Backups of a node's data directory: made online from a running engine
// (engine::Engine::Backup takes the consistent cut), written as a directory
// or a zstd-compressed tar archive (libarchive), each with BACKUP.json, a
// manifest of every file's size and XXH3-64 checksum; listed, verified and
// restored into an empty data directory. The layout is in
// docs/operations.md ("Backups").
//
// Crash safety: a backup is written under a temporary name (".tmp"), every
// file synced, the manifest written last, and only then renamed to its
// final name (and the directory synced), so a backup cut short by a crash
// or kill -9 never looks complete: List reports it as incomplete, Verify
// and Restore refuse it. A restore writes the engine's MANIFEST last, after
// every checksum matched, and the engine refuses a directory with shard
// directories and no MANIFEST, so a restore cut short never opens as a
// store either.
//
// Thread-safety: the functions share no state; each may run on any thread.
// They block on disk I/O: never call them on a network loop.
#ifndef LOGKV_SERVER_BACKUP_BACKUP_H_
#define LOGKV_SERVER_BACKUP_BACKUP_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/engine.h"

namespace logkv::server::backup {

enum class BackupFormat {
  kArchive,    // NAME.tar.zst: a POSIX tar archive, zstd-compressed
  kDirectory,  // NAME/: the files as they are in a data directory
};
// "archive" | "directory"; InvalidArgument otherwise.
absl::StatusOr<BackupFormat> ParseBackupFormat(absl::string_view text);
const char* BackupFormatName(BackupFormat format);

inline constexpr char kManifestFileName[] = "BACKUP.json";
inline constexpr char kNamePrefix[] = "logkv-backup-";
inline constexpr char kArchiveSuffix[] = ".tar.zst";
inline constexpr char kTemporarySuffix[] = ".tmp";

struct BackupFile {
  std::string path;  // relative to the data directory: "shard-000/000000000001.log"
  uint64_t bytes = 0;
  uint64_t xxh3 = 0;
};

// BACKUP.json, itself checksummed (XXH3-64 of its other fields).
struct BackupManifest {
  std::string name;
  std::string node_id;
  int64_t created_unix_ms = 0;  // when the cut was taken
  // Per shard, the last sequence number the backup holds.
  std::vector<uint64_t> shard_sequences;
  std::vector<BackupFile> files;
  uint64_t bytes = 0;  // of the files, uncompressed
  // The relative path of the control plane's snapshot among files, or
  // empty. Nodes do not run the control plane yet (server/control); once
  // they do, its snapshot is passed as an extra file (CreateOptions) and
  // named here, and a restore puts it back with the rest.
  std::string control_plane_snapshot;
};

// A file the node adds beside the engine's (the control plane's snapshot).
struct ExtraFile {
  std::string relative_path;  // e.g. "control/snapshot"
  std::string contents;
};

struct CreateOptions {
  std::string dir;   // where backups go (created if missing)
  std::string name;  // empty: logkv-backup-<UTC time of the start>
  BackupFormat format = BackupFormat::kArchive;
  int zstd_level = 3;             // archives: 1-19
  uint64_t bytes_per_second = 0;  // pace of the copy; 0 = unlimited
  // Directories only: hard-link sealed segments (immutable) instead of
  // writing them, when the backup is on the data's file system (else they
  // are copied). Fast and small, but the backup then shares those files'
  // blocks with the data: it guards against mistakes, not a lost disk.
  bool hard_links = false;
  std::string node_id;
  std::vector<ExtraFile> extra_files;
  std::string control_plane_snapshot;  // one of extra_files' paths, or empty
  std::function<void(uint64_t done, uint64_t total)> progress;
  const std::atomic<bool>* cancel = nullptr;
};

struct CreatedBackup {
  std::string path;  // the final name
  BackupManifest manifest;
  uint64_t stored_bytes = 0;  // on disk (compressed, for an archive)
  absl::Duration duration;
};

// Makes a backup of the running engine. On any failure (or cancellation)
// the temporary output is removed and nothing is left under the final name.
absl::StatusOr<CreatedBackup> CreateBackup(engine::Engine* engine, const CreateOptions& options);

struct ListedBackup {
  std::string name;
  std::string path;
  BackupFormat format = BackupFormat::kArchive;
  // false: a backup cut short (a temporary name) or one whose manifest
  // cannot be read (error says why).
  bool complete = false;
  std::string error;
  BackupManifest manifest;    // when complete
  uint64_t stored_bytes = 0;  // on disk
};
// The backups in dir, oldest first (names sort by time).
absl::StatusOr<std::vector<ListedBackup>> ListBackups(const std::string& dir);

// Reads every byte of the backup at path (an archive or a directory) and
// checks each file against the manifest: its presence, size and checksum,
// and no file the manifest does not name. DataLoss naming the first
// problem; the manifest when everything matches.
absl::StatusOr<BackupManifest> VerifyBackup(const std::string& path);

// Restores the backup at path into data_dir, which must be missing or
// empty (FailedPrecondition otherwise: a restore never mixes with data).
// Checksums are checked on the way; on any mismatch what was written is
// removed again. logkvd --data_dir=data_dir then opens it.
absl::StatusOr<BackupManifest> RestoreBackup(const std::string& path, const std::string& data_dir);

// Removes the oldest complete backups in dir beyond the newest keep; the
// paths removed. keep == 0 keeps everything.
absl::StatusOr<std::vector<std::string>> PruneBackups(const std::string& dir, size_t keep);

// Removes the temporary leftovers of backups cut short (a crash while one
// was written); the paths removed. Only while no backup is being written
// into dir.
absl::StatusOr<std::vector<std::string>> RemoveIncompleteBackups(const std::string& dir);

}  // namespace logkv::server::backup

#endif  // LOGKV_SERVER_BACKUP_BACKUP_H_
