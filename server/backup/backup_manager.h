// A node's backups: one at a time, on request (POST /api/backup) and on a
// cron schedule (--backup_schedule), into --backup_dir, keeping the newest
// --backup_retention, paced to --backup_rate_limit; and what GET
// /api/backup/status reports (last success, duration, size, next run,
// failures).
//
// Thread-safety: every method may be called from any thread. Backups run
// on the manager's own thread, never on the caller's.
#ifndef LOGKV_SERVER_BACKUP_BACKUP_MANAGER_H_
#define LOGKV_SERVER_BACKUP_BACKUP_MANAGER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "server/backup/backup.h"
#include "server/backup/cron.h"

namespace logkv::server::backup {

struct BackupManagerOptions {
  std::string dir;          // --backup_dir; empty: no backups (requests answer 503)
  std::string schedule;     // --backup_schedule, cron; empty: only on request
  size_t retention = 0;     // --backup_retention: newest kept; 0 = all
  uint64_t bytes_per_second = 0;  // --backup_rate_limit; 0 = unlimited
  BackupFormat format = BackupFormat::kArchive;  // --backup_format
  bool hard_links = false;  // --backup_hard_links (directory format only)
  int zstd_level = 3;
  std::string node_id;
  // The control plane's snapshot, stored beside the engine's files (the
  // Node gives "control/configuration-at-backup"); null: none.
  std::function<absl::StatusOr<ExtraFile>()> control_plane_snapshot;
  // Called once each backup ends (success or failure), on the backup's
  // thread, under the manager's lock: it must not call the manager (the
  // audit log records it); null: none.
  std::function<void(const std::string& name, const absl::Status& result,
                     uint64_t stored_bytes)>
      on_finished;
};

// Checks the options (the schedule parses, the format is known); the
// messages name logkvd's flags.
absl::Status ValidateBackupOptions(const BackupManagerOptions& options);

struct BackupStatus {
  bool enabled = false;  // a backup directory is set
  std::string dir;
  std::string schedule;
  size_t retention = 0;
  uint64_t bytes_per_second = 0;
  BackupFormat format = BackupFormat::kArchive;

  bool running = false;
  std::string running_name;
  absl::Time running_since;
  uint64_t progress_bytes = 0;
  uint64_t progress_total_bytes = 0;

  struct Success {
    std::string name;
    std::string path;
    absl::Time finished;
    absl::Duration duration;
    uint64_t bytes = 0;         // of the data directory's files
    uint64_t stored_bytes = 0;  // on disk
    uint64_t files = 0;
  };
  std::optional<Success> last_success;
  uint64_t successes = 0;
  uint64_t failures = 0;              // since start
  uint64_t consecutive_failures = 0;  // since the last success
  absl::Time last_failure = absl::InfinitePast();
  std::string last_error;
  absl::Time next_run = absl::InfiniteFuture();  // the schedule's; none: infinite
};

class BackupManager {
 public:
  // engine must outlive the manager (Stop before closing it).
  BackupManager(engine::Engine* engine, BackupManagerOptions options);
  BackupManager(const BackupManager&) = delete;
  BackupManager& operator=(const BackupManager&) = delete;
  ~BackupManager();  // Stop()

  // Removes leftovers of backups cut short in dir (a crash while one was
  // written) and starts the thread. The options must be valid. node_id,
  // when not empty, replaces options.node_id in the manifests (a node
  // knows its id once it has bound its port).
  absl::Status Start(std::string node_id = "") ABSL_LOCKS_EXCLUDED(mu_);
  // Cancels a backup in progress (its temporary output is removed) and
  // joins the thread. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  // Starts a backup now, on the manager's thread; its name.
  // FailedPrecondition when no directory is set, AlreadyExists while one
  // runs (its name in the message), Unavailable when stopped.
  absl::StatusOr<std::string> RequestBackup() ABSL_LOCKS_EXCLUDED(mu_);

  BackupStatus Status() const ABSL_LOCKS_EXCLUDED(mu_);

  // What may change while the node runs (a configuration reload): the
  // schedule (the next run is computed anew; empty: only on request), the
  // retention and the rate, from the next backup on. InvalidArgument, and
  // nothing changes, when the schedule does not parse or needs a directory
  // the node has not.
  absl::Status Reconfigure(const std::string& schedule, size_t retention,
                           uint64_t bytes_per_second) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  // Runs one backup named name and records its outcome.
  void RunOne(const std::string& name) ABSL_LOCKS_EXCLUDED(mu_);

  engine::Engine* const engine_;
  const BackupManagerOptions options_;
  std::atomic<bool> cancel_{false};
  std::thread thread_;

  mutable absl::Mutex mu_;
  absl::CondVar wake_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::string requested_ ABSL_GUARDED_BY(mu_);  // name of a requested backup, or empty
  // status_.schedule, .retention and .bytes_per_second are the settings in
  // force (Reconfigure changes them); schedule_ is status_.schedule parsed.
  BackupStatus status_ ABSL_GUARDED_BY(mu_);
  std::optional<CronSchedule> schedule_ ABSL_GUARDED_BY(mu_);
  std::string node_id_ ABSL_GUARDED_BY(mu_);
};

}  // namespace logkv::server::backup

#endif  // LOGKV_SERVER_BACKUP_BACKUP_MANAGER_H_
