#include "server/backup/backup_manager.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/log.h"

namespace logkv::server::backup {

namespace {

std::string NewName(absl::Time now) {
  return absl::StrCat(kNamePrefix, absl::FormatTime("%Y%m%dT%H%M%E3SZ", now, absl::UTCTimeZone()));
}

}  // namespace

absl::Status ValidateBackupOptions(const BackupManagerOptions& options) {
  if (!options.schedule.empty()) {
    auto schedule = CronSchedule::Parse(options.schedule);
    if (!schedule.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--backup_schedule: ", schedule.status().message()));
    }
    if (options.dir.empty()) {
      return absl::InvalidArgumentError("--backup_schedule needs --backup_dir");
    }
    // A day that no month has ("* * 31 2 *"): no backup would ever run.
    if (schedule->Next(absl::Now()) == absl::InfiniteFuture()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--backup_schedule '", options.schedule, "' matches no time: no backup would run"));
    }
  }
  if (options.hard_links && options.format != BackupFormat::kDirectory) {
    return absl::InvalidArgumentError("--backup_hard_links needs --backup_format=directory");
  }
  if (options.zstd_level < 1 || options.zstd_level > 19) {
    return absl::InvalidArgumentError("the backup zstd level must be in [1, 19]");
  }
  return absl::OkStatus();
}

BackupManager::BackupManager(engine::Engine* engine, BackupManagerOptions options)
    : engine_(engine), options_(std::move(options)) {
  absl::MutexLock lock(&mu_);
  if (!options_.schedule.empty()) {
    if (auto schedule = CronSchedule::Parse(options_.schedule); schedule.ok()) {
      schedule_ = *std::move(schedule);
    }
  }
  status_.enabled = !options_.dir.empty();
  status_.dir = options_.dir;
  status_.schedule = options_.schedule;
  status_.retention = options_.retention;
  status_.bytes_per_second = options_.bytes_per_second;
  status_.format = options_.format;
}

BackupManager::~BackupManager() { Stop(); }

absl::Status BackupManager::Start(std::string node_id) {
  if (absl::Status status = ValidateBackupOptions(options_); !status.ok()) return status;
  if (!options_.dir.empty()) {
    auto removed = RemoveIncompleteBackups(options_.dir);
    if (!removed.ok()) return removed.status();
    for (const std::string& path : *removed) {
      Log(Level::kWarning, "removed %s, a backup cut short (by a crash or a kill)", path);
    }
  }
  absl::MutexLock lock(&mu_);
  if (started_) return absl::FailedPreconditionError("the backup manager runs already");
  started_ = true;
  stop_ = false;
  node_id_ = node_id.empty() ? options_.node_id : std::move(node_id);
  if (schedule_.has_value()) status_.next_run = schedule_->Next(absl::Now());
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void BackupManager::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (!started_) return;
    started_ = false;
    stop_ = true;
    wake_.SignalAll();
  }
  cancel_.store(true);
  if (thread_.joinable()) thread_.join();
  cancel_.store(false);
}

absl::StatusOr<std::string> BackupManager::RequestBackup() {
  if (options_.dir.empty()) {
    return absl::FailedPreconditionError("backups are off: logkvd runs without --backup_dir");
  }
  absl::MutexLock lock(&mu_);
  if (stop_) return absl::UnavailableError("the node is stopping");
  if (!started_) return absl::UnavailableError("the node is starting: ask again shortly");
  if (status_.running || !requested_.empty()) {
    return absl::AlreadyExistsError(absl::StrCat(
        "a backup is running already: ", status_.running ? status_.running_name : requested_));
  }
  requested_ = NewName(absl::Now());
  wake_.Signal();
  return requested_;
}

absl::Status BackupManager::Reconfigure(const std::string& schedule, size_t retention,
                                        uint64_t bytes_per_second) {
  BackupManagerOptions changed = options_;
  changed.schedule = schedule;
  if (absl::Status status = ValidateBackupOptions(changed); !status.ok()) return status;
  std::optional<CronSchedule> parsed;
  if (!schedule.empty()) parsed = *CronSchedule::Parse(schedule);
  absl::MutexLock lock(&mu_);
  schedule_ = std::move(parsed);
  status_.schedule = schedule;
  status_.retention = retention;
  status_.bytes_per_second = bytes_per_second;
  status_.next_run = schedule_.has_value() ? schedule_->Next(absl::Now()) : absl::InfiniteFuture();
  wake_.Signal();  // the thread waits for the new next run
  return absl::OkStatus();
}

BackupStatus BackupManager::Status() const {
  absl::MutexLock lock(&mu_);
  return status_;
}

void BackupManager::Loop() {
  while (true) {
    std::string name;
    {
      absl::MutexLock lock(&mu_);
      while (!stop_ && requested_.empty() && absl::Now() < status_.next_run) {
        wake_.WaitWithDeadline(&mu_, status_.next_run);
      }
      if (stop_) return;
      if (!requested_.empty()) {
        name = std::move(requested_);
        requested_.clear();
      } else {
        name = NewName(absl::Now());
      }
      if (schedule_.has_value() && absl::Now() >= status_.next_run) {
        status_.next_run = schedule_->Next(absl::Now());
      }
      status_.running = true;
      status_.running_name = name;
      status_.running_since = absl::Now();
      status_.progress_bytes = 0;
      status_.progress_total_bytes = 0;
    }
    RunOne(name);
  }
}

void BackupManager::RunOne(const std::string& name) {
  CreateOptions create;
  create.dir = options_.dir;
  create.name = name;
  create.format = options_.format;
  create.hard_links = options_.hard_links;
  create.zstd_level = options_.zstd_level;
  size_t retention = 0;
  {
    absl::MutexLock lock(&mu_);
    create.node_id = node_id_;
    create.bytes_per_second = status_.bytes_per_second;
    retention = status_.retention;
  }
  create.cancel = &cancel_;
  create.progress = [this](uint64_t done, uint64_t total) {
    absl::MutexLock lock(&mu_);
    status_.progress_bytes = done;
    status_.progress_total_bytes = total;
  };
  absl::StatusOr<CreatedBackup> created = absl::UnknownError("not run");
  absl::Status snapshot_status;
  if (options_.control_plane_snapshot) {
    absl::StatusOr<ExtraFile> snapshot = options_.control_plane_snapshot();
    if (snapshot.ok()) {
      create.control_plane_snapshot = snapshot->relative_path;
      create.extra_files.push_back(*std::move(snapshot));
    } else {
      snapshot_status = snapshot.status();
    }
  }
  if (snapshot_status.ok()) {
    created = CreateBackup(engine_, create);
  } else {
    created = absl::Status(snapshot_status.code(),
                           absl::StrCat("the control plane's snapshot: ", snapshot_status.message()));
  }
  std::vector<std::string> pruned;
  absl::Status prune_status;
  if (created.ok() && retention > 0) {
    auto removed = PruneBackups(options_.dir, retention);
    if (removed.ok()) {
      pruned = *std::move(removed);
    } else {
      prune_status = removed.status();
    }
  }

  absl::MutexLock lock(&mu_);
  status_.running = false;
  status_.running_name.clear();
  if (created.ok()) {
    BackupStatus::Success success;
    success.name = name;
    success.path = created->path;
    success.finished = absl::Now();
    success.duration = created->duration;
    success.bytes = created->manifest.bytes;
    success.stored_bytes = created->stored_bytes;
    success.files = created->manifest.files.size();
    status_.last_success = success;
    ++status_.successes;
    status_.consecutive_failures = 0;
    Log(Level::kInfo, "backup %s done: %d files, %d bytes (%d stored) in %s", created->path,
        success.files, success.bytes, success.stored_bytes,
        absl::FormatDuration(success.duration));
    for (const std::string& path : pruned) Log(Level::kInfo, "backup retention removed %s", path);
    if (!prune_status.ok()) {
      Log(Level::kWarning, "backup retention: %s", prune_status.message());
    }
  } else {
    ++status_.failures;
    ++status_.consecutive_failures;
    status_.last_failure = absl::Now();
    status_.last_error = std::string(created.status().message());
    Log(Level::kError, "backup %s failed: %s", name, created.status().message());
  }
  if (options_.on_finished) {
    options_.on_finished(name, created.ok() ? absl::OkStatus() : created.status(),
                         created.ok() ? created->stored_bytes : 0);
  }
}

}  // namespace logkv::server::backup
