#include "tests/engine/fault_injection_file_system.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/engine.h"

namespace logkv::test {

// A WritableFile whose bytes go to a base file while the file system is
// active and nowhere while it is not. base_ is null for a file created while
// the file system was inactive: it exists only in memory.
class FaultInjectionFileSystem::FaultInjectionWritableFile final : public engine::WritableFile {
 public:
  FaultInjectionWritableFile(FaultInjectionFileSystem* fs, std::string path,
                             std::unique_ptr<engine::WritableFile> base, uint64_t capacity_bytes,
                             std::shared_ptr<FileState> state)
      : fs_(fs),
        path_(std::move(path)),
        base_(std::move(base)),
        capacity_bytes_(capacity_bytes),
        state_(std::move(state)) {}

  FaultInjectionWritableFile(const FaultInjectionWritableFile&) = delete;
  FaultInjectionWritableFile& operator=(const FaultInjectionWritableFile&) = delete;

  // The base file's destructor releases its mapping and descriptor (and trims
  // it like Close), so a writer destroyed without Close still lets
  // DropUnsyncedData run afterwards.
  ~FaultInjectionWritableFile() override {
    if (!closed_) {
      base_.reset();
      fs_->RecordClose(state_);
    }
  }

  absl::Status Append(absl::string_view data) override {
    absl::ReaderMutexLock active_lock(&fs_->active_mu_);
    if (!fs_->active_) {
      // The engine must keep seeing a file that grows, or it would trip over
      // its own invariants while it is torn down.
      ignored_bytes_.fetch_add(data.size(), std::memory_order_relaxed);
      return absl::OkStatus();
    }
    if (base_ == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat(path_, " was created while the file system was inactive"));
    }
    if (absl::Status status = fs_->MaybeInjectFailure("append to", path_); !status.ok()) {
      return status;
    }
    absl::Status status = base_->Append(data);
    if (status.ok()) fs_->RecordAppend(state_, data.size());
    return status;
  }

  absl::StatusOr<absl::string_view> Read(uint64_t offset, size_t n, char* scratch) const override {
    if (base_ == nullptr) {
      return absl::UnavailableError(
          absl::StrCat(path_, " was created while the file system was inactive"));
    }
    return base_->Read(offset, n, scratch);
  }

  absl::Status Sync() override {
    absl::ReaderMutexLock active_lock(&fs_->active_mu_);
    if (!fs_->active_) return absl::OkStatus();
    if (base_ == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat(path_, " was created while the file system was inactive"));
    }
    if (absl::Status status = fs_->MaybeInjectFailure("sync of", path_); !status.ok()) {
      return status;
    }
    // Only bytes appended before the sync began are certainly covered by it.
    const uint64_t appended_bytes = fs_->AppendedBytes(state_);
    absl::Status status = base_->Sync();
    if (status.ok()) fs_->RecordSync(state_, appended_bytes);
    return status;
  }

  void Prepare(uint64_t bytes) override {
    absl::ReaderMutexLock active_lock(&fs_->active_mu_);
    if (fs_->active_ && base_ != nullptr) base_->Prepare(bytes);
  }

  void StartWriteback() override {
    absl::ReaderMutexLock active_lock(&fs_->active_mu_);
    if (!fs_->active_ || base_ == nullptr) return;
    base_->StartWriteback();
    absl::MutexLock state_lock(&fs_->state_mu_);
    ++fs_->writeback_count_;
  }

  absl::Status Close() override {
    if (closed_) return absl::OkStatus();
    closed_ = true;
    absl::ReaderMutexLock active_lock(&fs_->active_mu_);
    // Released even when inactive: see the header for why that is harmless.
    absl::Status status = base_ != nullptr ? base_->Close() : absl::OkStatus();
    fs_->RecordClose(state_);
    return fs_->active_ ? status : absl::OkStatus();
  }

  uint64_t Size() const override {
    const uint64_t ignored = ignored_bytes_.load(std::memory_order_relaxed);
    return base_ != nullptr ? base_->Size() + ignored : ignored;
  }

  uint64_t Capacity() const override { return capacity_bytes_; }

 private:
  FaultInjectionFileSystem* const fs_;
  const std::string path_;
  std::unique_ptr<engine::WritableFile> base_;
  const uint64_t capacity_bytes_;
  const std::shared_ptr<FileState> state_;
  std::atomic<uint64_t> ignored_bytes_{0};  // appended while inactive
  bool closed_ = false;                     // the owner serialises Close
};

FaultInjectionFileSystem::FaultInjectionFileSystem(engine::FileSystem* base) : base_(base) {}

FaultInjectionFileSystem::~FaultInjectionFileSystem() = default;

// ---- Fault controls -------------------------------------------------------------

void FaultInjectionFileSystem::SetActive(bool active) {
  absl::WriterMutexLock active_lock(&active_mu_);
  active_ = active;
}

bool FaultInjectionFileSystem::IsActive() const {
  absl::ReaderMutexLock active_lock(&active_mu_);
  return active_;
}

absl::Status FaultInjectionFileSystem::DropUnsyncedData() {
  absl::WriterMutexLock active_lock(&active_mu_);
  absl::MutexLock state_lock(&state_mu_);
  if (absl::Status status = CheckNoOpenFiles(); !status.ok()) return status;
  absl::Status result;
  for (auto it = files_.begin(); it != files_.end();) {
    const std::string& path = it->first;
    FileState& state = *it->second;
    if (!state.ever_synced) {
      absl::Status status = base_->RemoveFile(path);
      if (!status.ok() && !absl::IsNotFound(status) && result.ok()) result = status;
      it = files_.erase(it);
      continue;
    }
    absl::StatusOr<uint64_t> size = base_->FileSize(path);
    if (size.ok() && *size > state.synced_bytes) {
      absl::Status status = base_->TruncateFile(path, state.synced_bytes);
      if (!status.ok() && result.ok()) result = status;
    } else if (!size.ok() && !absl::IsNotFound(size.status()) && result.ok()) {
      result = size.status();
    }
    state.size_bytes = state.synced_bytes;
    ++it;
  }
  return result;
}

absl::Status FaultInjectionFileSystem::RemoveFilesCreatedAfterLastDirSync() {
  absl::WriterMutexLock active_lock(&active_mu_);
  absl::MutexLock state_lock(&state_mu_);
  if (absl::Status status = CheckNoOpenFiles(); !status.ok()) return status;
  absl::Status result;
  for (auto it = files_.begin(); it != files_.end();) {
    if (it->second->entry_durable) {
      ++it;
      continue;
    }
    absl::Status status = base_->RemoveFile(it->first);
    if (!status.ok() && !absl::IsNotFound(status) && result.ok()) result = status;
    it = files_.erase(it);
  }
  return result;
}

void FaultInjectionFileSystem::FailWritesAfter(int n) {
  absl::MutexLock state_lock(&state_mu_);
  fail_enabled_ = true;
  calls_before_failure_ = std::max(n, 0);
}

void FaultInjectionFileSystem::ClearFailures() {
  absl::MutexLock state_lock(&state_mu_);
  fail_enabled_ = false;
  calls_before_failure_ = 0;
}

void FaultInjectionFileSystem::SetReopenUnsupported(bool unsupported) {
  absl::MutexLock state_lock(&state_mu_);
  reopen_unsupported_ = unsupported;
}

void FaultInjectionFileSystem::SetSyncFileFails(bool fails) {
  absl::MutexLock state_lock(&state_mu_);
  sync_file_fails_ = fails;
}

void FaultInjectionFileSystem::SetDiskFull(bool full) {
  absl::MutexLock state_lock(&state_mu_);
  disk_full_ = full;
}

// ---- Observation ------------------------------------------------------------------

uint64_t FaultInjectionFileSystem::append_count() const {
  absl::MutexLock state_lock(&state_mu_);
  return append_count_;
}

uint64_t FaultInjectionFileSystem::sync_count() const {
  absl::MutexLock state_lock(&state_mu_);
  return sync_count_;
}

uint64_t FaultInjectionFileSystem::file_sync_count() const {
  absl::MutexLock state_lock(&state_mu_);
  return file_sync_count_;
}

uint64_t FaultInjectionFileSystem::dir_sync_count() const {
  absl::MutexLock state_lock(&state_mu_);
  return dir_sync_count_;
}

uint64_t FaultInjectionFileSystem::writeback_count() const {
  absl::MutexLock state_lock(&state_mu_);
  return writeback_count_;
}

uint64_t FaultInjectionFileSystem::injected_failures() const {
  absl::MutexLock state_lock(&state_mu_);
  return injected_failures_;
}

uint64_t FaultInjectionFileSystem::refused_creations() const {
  absl::MutexLock state_lock(&state_mu_);
  return refused_creations_;
}

void FaultInjectionFileSystem::ResetCounters() {
  absl::MutexLock state_lock(&state_mu_);
  append_count_ = 0;
  sync_count_ = 0;
  file_sync_count_ = 0;
  dir_sync_count_ = 0;
  writeback_count_ = 0;
  injected_failures_ = 0;
  refused_creations_ = 0;
}

std::optional<FaultInjectionFileSystem::FileState> FaultInjectionFileSystem::GetFileState(
    const std::string& path) const {
  absl::MutexLock state_lock(&state_mu_);
  auto it = files_.find(Normalize(path));
  if (it == files_.end()) return std::nullopt;
  return *it->second;
}

std::vector<std::string> FaultInjectionFileSystem::TrackedFiles() const {
  absl::MutexLock state_lock(&state_mu_);
  std::vector<std::string> paths;
  paths.reserve(files_.size());
  for (const auto& [path, state] : files_) paths.push_back(path);
  return paths;
}

// ---- FileSystem -----------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<engine::WritableFile>> FaultInjectionFileSystem::NewWritableFile(
    const std::string& path, uint64_t capacity_bytes) {
  absl::ReaderMutexLock active_lock(&active_mu_);
  if (!active_) {
    // A dead machine creates nothing; the engine still gets a file to write
    // into so its shutdown path runs as it would.
    auto state = std::make_shared<FileState>();
    state->open_writers = 1;
    return std::make_unique<FaultInjectionWritableFile>(this, path, nullptr, capacity_bytes,
                                                        std::move(state));
  }
  if (absl::Status status = CheckSpace("fallocate", path); !status.ok()) return status;
  const bool existed = base_->FileExists(path);
  absl::StatusOr<std::unique_ptr<engine::WritableFile>> base_file =
      base_->NewWritableFile(path, capacity_bytes);
  if (!base_file.ok()) return base_file.status();
  auto state = std::make_shared<FileState>();
  state->open_writers = 1;
  {
    absl::MutexLock state_lock(&state_mu_);
    std::shared_ptr<FileState>& slot = files_[Normalize(path)];
    // Truncating an existing file keeps its directory entry.
    state->entry_durable = slot != nullptr ? slot->entry_durable : existed;
    slot = state;
  }
  return std::make_unique<FaultInjectionWritableFile>(this, path, *std::move(base_file),
                                                      capacity_bytes, std::move(state));
}

absl::StatusOr<std::unique_ptr<engine::WritableFile>>
FaultInjectionFileSystem::ReopenWritableFile(const std::string& path, uint64_t capacity_bytes) {
  absl::ReaderMutexLock active_lock(&active_mu_);
  if (!active_) {
    return absl::UnavailableError(
        absl::StrCat("cannot reopen ", path, ": the file system is inactive"));
  }
  {
    absl::MutexLock state_lock(&state_mu_);
    if (reopen_unsupported_) return absl::UnimplementedError("reopening files is not supported");
  }
  if (absl::Status status = CheckSpace("fallocate", path); !status.ok()) return status;
  absl::StatusOr<std::unique_ptr<engine::WritableFile>> base_file =
      base_->ReopenWritableFile(path, capacity_bytes);
  if (!base_file.ok()) return base_file.status();
  std::shared_ptr<FileState> state;
  {
    absl::MutexLock state_lock(&state_mu_);
    std::shared_ptr<FileState>& slot = files_[Normalize(path)];
    if (slot == nullptr) {
      slot = std::make_shared<FileState>();
      slot->size_bytes = (*base_file)->Size();
      slot->synced_bytes = slot->size_bytes;
      slot->ever_synced = true;
      slot->entry_durable = true;
    }
    ++slot->open_writers;
    state = slot;
  }
  return std::make_unique<FaultInjectionWritableFile>(this, path, *std::move(base_file),
                                                      capacity_bytes, std::move(state));
}

absl::StatusOr<std::unique_ptr<engine::ReadableFile>> FaultInjectionFileSystem::NewReadableFile(
    const std::string& path) {
  return base_->NewReadableFile(path);
}

absl::Status FaultInjectionFileSystem::WriteFile(const std::string& path, absl::string_view data,
                                                 bool sync) {
  absl::ReaderMutexLock active_lock(&active_mu_);
  if (!active_) return absl::OkStatus();
  if (absl::Status status = MaybeInjectFailure("write of", path); !status.ok()) return status;
  if (absl::Status status = CheckSpace("write", path); !status.ok()) return status;
  const bool existed = base_->FileExists(path);
  absl::Status status = base_->WriteFile(path, data, sync);
  auto state = std::make_shared<FileState>();
  // A failed write leaves unknown bytes behind; treating them as never synced
  // makes DropUnsyncedData remove them.
  state->size_bytes = status.ok() ? data.size() : 0;
  state->synced_bytes = status.ok() && sync ? data.size() : 0;
  state->ever_synced = status.ok() && sync;
  absl::MutexLock state_lock(&state_mu_);
  std::shared_ptr<FileState>& slot = files_[Normalize(path)];
  state->entry_durable = slot != nullptr ? slot->entry_durable : existed;
  slot = std::move(state);
  if (status.ok() && sync) ++file_sync_count_;
  return status;
}

absl::StatusOr<std::string> FaultInjectionFileSystem::ReadFile(const std::string& path) {
  return base_->ReadFile(path);
}

absl::Status FaultInjectionFileSystem::CreateDir(const std::string& path) {
  absl::ReaderMutexLock active_lock(&active_mu_);
  if (!active_) return absl::OkStatus();
  return base_->CreateDir(path);
}

absl::StatusOr<std::vector<std::string>> FaultInjectionFileSystem::ListDir(
    const std::string& path) {
  return base_->ListDir(path);
}

absl::Status FaultInjectionFileSystem::RemoveFile(const std::string& path) {
  absl::ReaderMutexLock active_lock(&active_mu_);
  if (!active_) return absl::OkStatus();
  absl::Status status = base_->RemoveFile(path);
  if (status.ok()) {
    absl::MutexLock state_lock(&state_mu_);
    files_.erase(Normalize(path));
  }
  return status;
}

absl::Status FaultInjectionFileSystem::RenameFile(const std::string& from, const std::string& to) {
  absl::ReaderMutexLock active_lock(&active_mu_);
  if (!active_) return absl::OkStatus();
  const bool target_existed = base_->FileExists(to);
  absl::Status status = base_->RenameFile(from, to);
  if (!status.ok()) return status;
  absl::MutexLock state_lock(&state_mu_);
  const std::string normalized_to = Normalize(to);
  bool target_entry_durable = false;
  if (target_existed) {
    auto target = files_.find(normalized_to);
    target_entry_durable = target == files_.end() || target->second->entry_durable;
  }
  auto source = files_.find(Normalize(from));
  if (source == files_.end()) {
    // A file written before this wrapper existed is taken as durable and
    // stays untracked under its new name.
    files_.erase(normalized_to);
    return status;
  }
  std::shared_ptr<FileState> state = std::move(source->second);
  files_.erase(source);
  state->entry_durable = target_entry_durable;
  files_[normalized_to] = std::move(state);
  return status;
}

absl::Status FaultInjectionFileSystem::TruncateFile(const std::string& path, uint64_t size) {
  absl::ReaderMutexLock active_lock(&active_mu_);
  if (!active_) return absl::OkStatus();
  absl::Status status = base_->TruncateFile(path, size);
  if (status.ok()) {
    absl::MutexLock state_lock(&state_mu_);
    auto it = files_.find(Normalize(path));
    if (it != files_.end()) {
      it->second->size_bytes = size;
      it->second->synced_bytes = std::min(it->second->synced_bytes, size);
    }
  }
  return status;
}

absl::StatusOr<uint64_t> FaultInjectionFileSystem::FileSize(const std::string& path) {
  return base_->FileSize(path);
}

bool FaultInjectionFileSystem::FileExists(const std::string& path) {
  return base_->FileExists(path);
}

absl::Status FaultInjectionFileSystem::SyncDir(const std::string& path) {
  absl::ReaderMutexLock active_lock(&active_mu_);
  if (!active_) return absl::OkStatus();
  absl::Status status = base_->SyncDir(path);
  if (!status.ok()) return status;
  const std::string dir = Normalize(path);
  absl::MutexLock state_lock(&state_mu_);
  ++dir_sync_count_;
  for (auto& [file_path, state] : files_) {
    if (ParentOf(file_path) == dir) state->entry_durable = true;
  }
  return status;
}

absl::Status FaultInjectionFileSystem::SyncFile(const std::string& path) {
  absl::ReaderMutexLock active_lock(&active_mu_);
  if (!active_) return absl::OkStatus();
  if (absl::Status status = MaybeInjectFailure("sync of", path); !status.ok()) return status;
  std::shared_ptr<FileState> state;
  {
    absl::MutexLock state_lock(&state_mu_);
    if (sync_file_fails_) {
      ++injected_failures_;
      return absl::InternalError(absl::StrCat("injected failure: fdatasync of ", path));
    }
    auto it = files_.find(Normalize(path));
    if (it != files_.end()) state = it->second;
  }
  // Only bytes on disk before the sync began are certainly covered by it.
  const uint64_t on_disk = state != nullptr ? AppendedBytes(state) : 0;
  absl::Status status = base_->SyncFile(path);
  if (!status.ok()) return status;
  if (state != nullptr) {
    RecordSync(state, on_disk);
  } else {
    absl::MutexLock state_lock(&state_mu_);
    ++sync_count_;
  }
  return status;
}

absl::StatusOr<std::unique_ptr<engine::FileSystem::Lock>> FaultInjectionFileSystem::LockFile(
    const std::string& path) {
  return base_->LockFile(path);
}

// ---- Private ---------------------------------------------------------------------------

std::string FaultInjectionFileSystem::Normalize(const std::string& path) {
  std::string normalized = std::filesystem::path(path).lexically_normal().string();
  while (normalized.size() > 1 && normalized.back() == '/') normalized.pop_back();
  return normalized;
}

std::string FaultInjectionFileSystem::ParentOf(const std::string& normalized_path) {
  const size_t slash = normalized_path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return normalized_path.substr(0, slash);
}

absl::Status FaultInjectionFileSystem::MaybeInjectFailure(const char* operation,
                                                          const std::string& path) {
  absl::MutexLock state_lock(&state_mu_);
  if (!fail_enabled_) return absl::OkStatus();
  if (calls_before_failure_ > 0) {
    --calls_before_failure_;
    return absl::OkStatus();
  }
  ++injected_failures_;
  return absl::InternalError(absl::StrCat("injected I/O error: ", operation, " ", path));
}

absl::Status FaultInjectionFileSystem::CheckSpace(const char* operation,
                                                  const std::string& path) {
  absl::MutexLock state_lock(&state_mu_);
  if (!disk_full_) return absl::OkStatus();
  ++refused_creations_;
  return engine::NoSpaceError(
      absl::StrCat(operation, " ", path, ": No space left on device (injected)"));
}

void FaultInjectionFileSystem::RecordAppend(const std::shared_ptr<FileState>& state,
                                            uint64_t appended_bytes) {
  absl::MutexLock state_lock(&state_mu_);
  state->size_bytes += appended_bytes;
  ++append_count_;
}

void FaultInjectionFileSystem::RecordSync(const std::shared_ptr<FileState>& state,
                                          uint64_t synced_bytes) {
  absl::MutexLock state_lock(&state_mu_);
  state->synced_bytes = std::max(state->synced_bytes, synced_bytes);
  state->ever_synced = true;
  ++sync_count_;
}

void FaultInjectionFileSystem::RecordClose(const std::shared_ptr<FileState>& state) {
  absl::MutexLock state_lock(&state_mu_);
  --state->open_writers;
}

uint64_t FaultInjectionFileSystem::AppendedBytes(const std::shared_ptr<FileState>& state) const {
  absl::MutexLock state_lock(&state_mu_);
  return state->size_bytes;
}

absl::Status FaultInjectionFileSystem::CheckNoOpenFiles() const {
  for (const auto& [path, state] : files_) {
    if (state->open_writers > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, " is still open: destroy the engine before dropping data"));
    }
  }
  return absl::OkStatus();
}

}  // namespace logkv::test
