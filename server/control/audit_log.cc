#include "server/control/audit_log.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/control/control_plane.h"

namespace logkv::server::control {

namespace fs = std::filesystem;

namespace {

absl::Status WriteAll(int fd, absl::string_view bytes, const std::string& path) {
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::InternalError(absl::StrCat("write ", path, ": ", strerror(errno)));
    written += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::vector<std::string> ReadLines(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path, std::ios::binary);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) lines.push_back(std::move(line));
  }
  return lines;
}

}  // namespace

AuditLog::AuditLog(AuditLogOptions options, audit::Signer signer)
    : options_(std::move(options)), signer_(std::move(signer)) {}

AuditLog::~AuditLog() {
  {
    absl::MutexLock lock(&queue_mu_);
    stopping_ = true;
  }
  if (writer_.joinable()) writer_.join();  // after writing what is queued
  absl::MutexLock lock(&mu_);
  if (fd_ >= 0) ::close(fd_);
}

void AuditLog::Enqueue(std::vector<audit::Entry> entries, bool from_snapshot) {
  absl::MutexLock lock(&queue_mu_);
  queue_.push_back(Queued{std::move(entries), from_snapshot});
  ++queued_;
}

void AuditLog::Flush() {
  absl::MutexLock lock(&queue_mu_);
  const uint64_t target = queued_;
  auto written = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
    return written_ >= target || !writer_.joinable();
  };
  queue_mu_.Await(absl::Condition(&written));
}

void AuditLog::WriterLoop() {
  while (true) {
    std::deque<Queued> batch;
    {
      absl::MutexLock lock(&queue_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
        return !queue_.empty() || stopping_;
      };
      queue_mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping, nothing left
      batch.swap(queue_);
    }
    // Consecutive commands' entries are written together: one fdatasync.
    std::vector<audit::Entry> pending;
    for (Queued& item : batch) {
      if (item.from_snapshot) {
        if (!pending.empty()) Add(pending, false);
        pending.clear();
        Add(item.entries, true);
        continue;
      }
      for (audit::Entry& entry : item.entries) pending.push_back(std::move(entry));
    }
    if (!pending.empty()) Add(pending, false);
    absl::MutexLock lock(&queue_mu_);
    written_ += batch.size();
  }
}

namespace {

// Cuts path after its last newline (a file that does not end with one
// ends with a line cut short).
absl::Status CutTornTail(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("open ", path, ": ", strerror(errno)));
  }
  struct stat info;
  off_t end = 0;
  if (::fstat(fd, &info) == 0) end = info.st_size;
  char tail[4096];
  off_t keep = end;
  while (keep > 0) {
    const off_t from = std::max<off_t>(0, keep - static_cast<off_t>(sizeof(tail)));
    const ssize_t n = ::pread(fd, tail, static_cast<size_t>(keep - from), from);
    if (n <= 0) break;
    const char* newline = static_cast<const char*>(memrchr(tail, '\n', static_cast<size_t>(n)));
    if (newline != nullptr) {
      keep = from + (newline - tail) + 1;
      break;
    }
    keep = from;
  }
  absl::Status status;
  if (keep < end && (::ftruncate(fd, keep) != 0 || ::fdatasync(fd) != 0)) {
    status = absl::InternalError(absl::StrCat("cutting the torn last line of ", path, ": ",
                                              strerror(errno)));
  }
  ::close(fd);
  return status;
}

}  // namespace

absl::Status AuditLog::OpenForAppend() {
  if (fd_ >= 0) ::close(fd_);
  const std::string path = (fs::path(options_.dir) / audit::kLogFileName).string();
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd_ < 0) return absl::InternalError(absl::StrCat("open ", path, ": ", strerror(errno)));
  return absl::OkStatus();
}

absl::Status AuditLog::Open() {
  absl::MutexLock lock(&mu_);
  std::error_code error;
  fs::create_directories(options_.dir, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("audit log: creating ", options_.dir, ": ", error.message()));
  }
  last_hash_ = audit::ZeroHash();
  const fs::path head_path = fs::path(options_.dir) / audit::kHeadFileName;
  std::ifstream head_in(head_path, std::ios::binary);
  if (head_in) {
    std::stringstream text;
    text << head_in.rdbuf();
    absl::StatusOr<audit::HeadFile> head = audit::HeadFileFromJson(text.str());
    if (!head.ok()) {
      return absl::DataLossError(
          absl::StrCat("audit log: ", head_path.string(), ": ", head.status().message()));
    }
    anchor_ = head->anchor;
    if (anchor_.has_value()) {
      last_seq_ = anchor_->seq;
      last_hash_ = anchor_->hash;
    }
    head_ = head->head;
  }
  // A last line cut by a crash or a full disk is cut off: its entry was
  // never written whole (so never synced), and the replay hands it over
  // again. New entries written after it would share its line.
  const std::string log_path = (fs::path(options_.dir) / audit::kLogFileName).string();
  if (absl::Status s = CutTornTail(log_path); !s.ok()) return s;
  // Where the file ends: its last entry that parses.
  const std::vector<std::string> lines = ReadLines(log_path);
  for (const std::string& line : lines) {
    absl::StatusOr<audit::Entry> entry = audit::EntryFromJson(line);
    if (!entry.ok()) continue;
    if (anchor_.has_value() && entry->seq <= anchor_->seq) continue;
    if (first_seq_ == 0) {
      first_seq_ = entry->seq;
      first_at_ms_ = entry->at_ms;
    }
    if (entry->seq > last_seq_) {
      last_seq_ = entry->seq;
      last_hash_ = entry->hash;
      last_at_ms_ = entry->at_ms;
    }
  }
  // A log that ends before its head was cut while the node was down: new
  // entries follow the head, so the check still names the missing ones
  // (the file is never healed by moving the anchor).
  if (head_.has_value() && head_->seq > last_seq_) {
    last_seq_ = head_->seq;
    last_hash_ = head_->hash;
  }
  if (absl::Status s = OpenForAppend(); !s.ok()) return s;
  writer_ = std::thread([this] { WriterLoop(); });
  return absl::OkStatus();
}

absl::Status AuditLog::WriteHead() {
  audit::HeadFile head;
  head.public_key = signer_.public_key();
  head.anchor = anchor_;
  if (last_seq_ > 0 && (!anchor_.has_value() || last_seq_ > anchor_->seq)) {
    head.head = signer_.Head(last_seq_, last_hash_);
  }
  return WriteFileAtomically((fs::path(options_.dir) / audit::kHeadFileName).string(),
                             audit::HeadFileToJson(head));
}

absl::Status AuditLog::AppendLocked(const std::vector<const audit::Entry*>& entries) {
  std::string text;
  for (const audit::Entry* entry : entries) {
    absl::StrAppend(&text, audit::EntryToJson(*entry), "\n");
  }
  if (text.empty()) return absl::OkStatus();
  const std::string path = (fs::path(options_.dir) / audit::kLogFileName).string();
  if (fd_ < 0) {
    if (absl::Status s = OpenForAppend(); !s.ok()) return s;
  }
  // The entries count as written once synced whole. A write or sync that
  // fails leaves the file as it was (a partial write is cut off), so the
  // next attempt appends after the last whole line.
  struct stat before;
  if (::fstat(fd_, &before) != 0) {
    return absl::InternalError(absl::StrCat("fstat ", path, ": ", strerror(errno)));
  }
  absl::Status written = WriteAll(fd_, text, path);
  if (written.ok() && ::fdatasync(fd_) != 0) {
    written = absl::InternalError(absl::StrCat("fdatasync ", path, ": ", strerror(errno)));
  }
  if (!written.ok()) {
    if (::ftruncate(fd_, before.st_size) != 0) {
      return absl::InternalError(absl::StrCat(written.message(), "; and cutting the part written: ",
                                              strerror(errno)));
    }
    return written;
  }
  for (const audit::Entry* entry : entries) {
    if (first_seq_ == 0) {
      first_seq_ = entry->seq;
      first_at_ms_ = entry->at_ms;
    }
    last_seq_ = entry->seq;
    last_hash_ = entry->hash;
    last_at_ms_ = entry->at_ms;
  }
  if (absl::Status s = WriteHead(); !s.ok()) return s;
  return ApplyRetention();
}

absl::Status AuditLog::ApplyRetention() {
  if (first_seq_ == 0 || last_seq_ < first_seq_) return absl::OkStatus();
  const uint64_t held = last_seq_ - first_seq_ + 1;
  const size_t limit = options_.retention_entries;
  const size_t slack = std::max<size_t>(64, limit / 8);
  const bool over_count = limit > 0 && held > limit + slack;
  // By age: against the newest entry's time (the command's), not a clock.
  // An eighth past the age too, so a steady trickle does not rewrite the
  // file for every entry.
  const int64_t age_ms = absl::ToInt64Milliseconds(options_.retention_age);
  const bool over_age = age_ms > 0 && last_at_ms_ - first_at_ms_ > age_ms + age_ms / 8;
  if (!over_count && !over_age) return absl::OkStatus();
  const std::string path = (fs::path(options_.dir) / audit::kLogFileName).string();
  std::vector<std::string> lines = ReadLines(path);
  std::vector<audit::Entry> kept;
  kept.reserve(lines.size());
  for (const std::string& line : lines) {
    absl::StatusOr<audit::Entry> entry = audit::EntryFromJson(line);
    if (entry.ok() && (!anchor_.has_value() || entry->seq > anchor_->seq)) {
      kept.push_back(*std::move(entry));
    }
  }
  if (kept.empty()) return absl::OkStatus();
  const int64_t newest_ms = kept.back().at_ms;
  size_t drop = 0;
  if (limit > 0 && kept.size() > limit) drop = kept.size() - limit;
  if (age_ms > 0) {
    while (drop < kept.size() - 1 && newest_ms - kept[drop].at_ms > age_ms) ++drop;
  }
  if (drop == 0) return absl::OkStatus();
  // The anchor first: a crash before the log is cut leaves entries before
  // it, which a check skips.
  anchor_ = signer_.Anchor(kept[drop - 1].seq, kept[drop - 1].hash);
  if (absl::Status s = WriteHead(); !s.ok()) return s;
  std::string text;
  for (size_t i = drop; i < kept.size(); ++i) {
    absl::StrAppend(&text, audit::EntryToJson(kept[i]), "\n");
  }
  if (absl::Status s = WriteFileAtomically(path, text); !s.ok()) return s;
  first_seq_ = kept[drop].seq;
  first_at_ms_ = kept[drop].at_ms;
  return OpenForAppend();
}

void AuditLog::Append(const std::vector<audit::Entry>& entries) { Enqueue(entries, false); }

void AuditLog::Add(const std::vector<audit::Entry>& entries, bool from_snapshot) {
  absl::MutexLock lock(&mu_);
  // Past the entries a write could not take and that wait for the next.
  if (overflowed_) return;
  const uint64_t held = waiting_.empty() ? last_seq_ : waiting_.back().seq;
  std::vector<const audit::Entry*> fresh;
  for (const audit::Entry& entry : entries) {
    if (entry.seq <= held) continue;  // a replay after a restart
    fresh.push_back(&entry);
  }
  if (fresh.empty() && waiting_.empty()) return;
  if (!fresh.empty() && from_snapshot && fresh.front()->seq != held + 1) {
    // Entries this node never received (it was restored from a snapshot
    // past them): the chain is anchored just before the new ones.
    waiting_.clear();
    anchor_ = signer_.Anchor(fresh.front()->seq - 1, fresh.front()->prev_hash);
    last_seq_ = anchor_->seq;
    last_hash_ = anchor_->hash;
    first_seq_ = 0;
  }
  // What waits, then the new entries, in one write.
  for (const audit::Entry* entry : fresh) waiting_.push_back(*entry);
  std::vector<const audit::Entry*> all;
  all.reserve(waiting_.size());
  for (const audit::Entry& entry : waiting_) all.push_back(&entry);
  const absl::Status status = AppendLocked(all);
  if (last_seq_ >= waiting_.back().seq) waiting_.clear();  // written, whatever failed after
  if (status.ok()) {
    if (failed_.load(std::memory_order_relaxed) && options_.on_problem) {
      options_.on_problem("", 0);
    }
    failed_.store(false, std::memory_order_relaxed);
    return;
  }
  const bool first_failure = !failed_.load(std::memory_order_relaxed);
  failed_.store(true, std::memory_order_relaxed);
  if (waiting_.size() > kMaxWaitingEntries) {
    // Bounded: the file takes nothing more until a restart, whose replay
    // hands every entry after the file's last over again.
    waiting_.clear();
    waiting_.shrink_to_fit();
    overflowed_ = true;
  }
  // Said when writes start failing and when the file stops taking entries,
  // not at every failed attempt between.
  if (options_.on_problem && (first_failure || overflowed_)) {
    options_.on_problem(
        overflowed_ ? absl::StrCat(status.message(), "; more than ", kMaxWaitingEntries,
                                   " entries waited, so the file takes none until a restart")
                    : std::string(status.message()),
        waiting_.size());
  }
}

void AuditLog::Restore(const AuditChainState& state) {
  Enqueue(std::vector<audit::Entry>(state.window.begin(), state.window.end()), true);
}

absl::StatusOr<AuditLog::Page> AuditLog::Read(uint64_t since, size_t limit) const {
  absl::MutexLock lock(&mu_);
  Page page;
  page.public_key = signer_.public_key();
  page.anchor = anchor_;
  if (last_seq_ > 0 && (!anchor_.has_value() || last_seq_ > anchor_->seq)) {
    page.head = signer_.Head(last_seq_, last_hash_);
  }
  // Lines are returned as written (what the chain's hashes cover).
  std::ifstream in((fs::path(options_.dir) / audit::kLogFileName).string(), std::ios::binary);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    absl::StatusOr<audit::Entry> entry = audit::EntryFromJson(line);
    if (!entry.ok() || entry->seq <= since) continue;
    if (anchor_.has_value() && entry->seq <= anchor_->seq) continue;
    if (page.entries.size() >= limit) {
      page.more = true;
      break;
    }
    page.entries.push_back(std::move(line));
  }
  return page;
}

absl::StatusOr<std::string> AuditLog::ReadJson(uint64_t since, size_t limit) const {
  absl::StatusOr<Page> page = Read(since, limit);
  if (!page.ok()) return page.status();
  audit::HeadFile head{.public_key = page->public_key, .anchor = page->anchor, .head = page->head};
  std::string text = audit::HeadFileToJson(head);
  // {"public_key":..,"anchor":..,"head":..} + the entries as written.
  while (!text.empty() && text.back() == '\n') text.pop_back();
  if (!text.empty() && text.back() == '}') text.pop_back();  // the object's own
  absl::StrAppend(&text, ",\"entries\":[");
  for (size_t i = 0; i < page->entries.size(); ++i) {
    absl::StrAppend(&text, i == 0 ? "" : ",", page->entries[i]);
  }
  absl::StrAppend(&text, "],\"more\":", page->more ? "true" : "false", "}");
  return text;
}

bool AuditLog::healthy() const { return !failed_.load(std::memory_order_relaxed); }

uint64_t AuditLog::last_seq() const {
  absl::MutexLock lock(&mu_);
  return last_seq_;
}

}  // namespace logkv::server::control
