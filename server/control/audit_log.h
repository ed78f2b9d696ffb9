// One node's file of the audit chain (docs/security.md, "Audit log"):
// `<data>/control/audit/log.jsonl`, one entry per line in seq order, and
// `head.json`, the public key, the anchor (the last entry dropped by
// retention, signed) and the head (the last entry written, signed). The
// entries come from the state machine (audit_state.h) as commands apply,
// so a restart, which replays the Raft log or restores a snapshot, hands
// over entries the file already has: they are skipped by seq. A snapshot
// whose entries start past the file's end (this node missed more than a
// snapshot holds) moves the anchor to just before them.
//
// Retention: at most retention_entries entries (0: no limit) and none older
// than retention_age before the newest entry's time (0: no limit), cut in
// steps of an eighth (at least 64 entries) so the file is not rewritten
// for every entry. The head file is written first (the new anchor), then
// the log; a crash between leaves entries before the anchor, which a check
// skips.
//
// Thread-safety: every method may be called from any thread.
#ifndef LOGKV_SERVER_CONTROL_AUDIT_LOG_H_
#define LOGKV_SERVER_CONTROL_AUDIT_LOG_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/control/audit_chain.h"
#include "server/control/audit_state.h"

namespace logkv::server::control {

struct AuditLogOptions {
  std::string dir;
  size_t retention_entries = 100000;  // 0: no limit by count
  absl::Duration retention_age = absl::ZeroDuration();  // 0: no limit by age
  // Called on the log's thread when writes start failing, and when the
  // entries waiting pass kMaxWaitingEntries (why, and the entries waiting),
  // and with why empty when writes succeed again.
  std::function<void(const std::string& why, size_t waiting)> on_problem;
};

class AuditLog {
 public:
  AuditLog(AuditLogOptions options, audit::Signer signer);
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;
  ~AuditLog();

  // Creates the directory or reads where the file stands.
  absl::Status Open() ABSL_LOCKS_EXCLUDED(mu_);

  // From the state machine's listener, on Raft's apply thread: queued, and
  // written (with its fdatasync and the head's rewrite) by the log's own
  // thread, so that a slow disk never holds up Raft. A process killed
  // before its queue is written loses nothing: the restart's replay hands
  // the entries over again.
  void Append(const std::vector<audit::Entry>& entries) ABSL_LOCKS_EXCLUDED(queue_mu_);
  void Restore(const AuditChainState& state) ABSL_LOCKS_EXCLUDED(queue_mu_);
  // Waits until everything queued before the call is written (tests, Stop).
  void Flush() ABSL_LOCKS_EXCLUDED(queue_mu_);

  struct Page {
    std::string public_key;  // raw
    std::optional<audit::ChainPoint> anchor;
    std::optional<audit::ChainPoint> head;
    std::vector<std::string> entries;  // JSON lines, seq > since
    bool more = false;                 // entries remain past the limit
  };
  // The file's entries with seq > since, at most limit (GET /api/audit).
  absl::StatusOr<Page> Read(uint64_t since, size_t limit) const ABSL_LOCKS_EXCLUDED(mu_);

  // The same as GET /api/audit's body: {"public_key", "anchor", "head",
  // "entries": [...], "more"}.
  absl::StatusOr<std::string> ReadJson(uint64_t since, size_t limit) const
      ABSL_LOCKS_EXCLUDED(mu_);

  uint64_t last_seq() const ABSL_LOCKS_EXCLUDED(mu_);
  // False while the last write failed (a full disk): the file lags the
  // chain. The entries it could not write wait, in memory, for the next
  // write (up to kMaxWaitingEntries; past that the file takes no entry until
  // a restart, whose replay hands them over again).
  bool healthy() const;
  static constexpr size_t kMaxWaitingEntries = 100000;
  const std::string& dir() const { return options_.dir; }

 private:
  void Add(const std::vector<audit::Entry>& entries, bool from_snapshot) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status AppendLocked(const std::vector<const audit::Entry*>& entries)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WriteHead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ApplyRetention() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status OpenForAppend() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  void WriterLoop() ABSL_LOCKS_EXCLUDED(queue_mu_);
  void Enqueue(std::vector<audit::Entry> entries, bool from_snapshot)
      ABSL_LOCKS_EXCLUDED(queue_mu_);

  const AuditLogOptions options_;
  struct Queued {
    std::vector<audit::Entry> entries;
    bool from_snapshot = false;
  };
  absl::Mutex queue_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::deque<Queued> queue_ ABSL_GUARDED_BY(queue_mu_);
  uint64_t queued_ ABSL_GUARDED_BY(queue_mu_) = 0;   // batches queued so far
  uint64_t written_ ABSL_GUARDED_BY(queue_mu_) = 0;  // of which written
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  std::thread writer_;  // started by Open
  const audit::Signer signer_;
  mutable absl::Mutex mu_;
  int fd_ ABSL_GUARDED_BY(mu_) = -1;
  std::optional<audit::ChainPoint> anchor_ ABSL_GUARDED_BY(mu_);
  std::optional<audit::ChainPoint> head_ ABSL_GUARDED_BY(mu_);  // as read at Open
  uint64_t last_seq_ ABSL_GUARDED_BY(mu_) = 0;  // 0: none written (then the anchor's)
  std::string last_hash_ ABSL_GUARDED_BY(mu_);
  uint64_t first_seq_ ABSL_GUARDED_BY(mu_) = 0;  // of the first line kept (0: none)
  int64_t first_at_ms_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t last_at_ms_ ABSL_GUARDED_BY(mu_) = 0;
  // The last write failed. Written under mu_, read without it too (a write
  // holds mu_ through its fdatasync): /health asks on a network loop.
  std::atomic<bool> failed_{false};
  // Entries after last_seq_ a failed write left, in order.
  std::vector<audit::Entry> waiting_ ABSL_GUARDED_BY(mu_);
  bool overflowed_ ABSL_GUARDED_BY(mu_) = false;  // waiting_ was full: until a restart
};

}  // namespace logkv::server::control

#endif  // LOGKV_SERVER_CONTROL_AUDIT_LOG_H_
