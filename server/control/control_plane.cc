#include "server/control/control_plane.h"

extern "C" {
#include <raft.h>
#include <raft/uv.h>
}
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sodium.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "protocol/frame.h"
#include "server/control/raft_fsm.h"
#include "server/control/raft_transport.h"

namespace logkv::server::control {

namespace fs = std::filesystem;

namespace {

// Free space below which the leader proposes nothing: room for new Raft
// segments (libraft prepares a few ahead, kRaftSegmentBytes each) and a
// snapshot.
constexpr uint64_t kDiskReserveBytes = 32u << 20;
// The size libraft gives a new open segment (a batch of entries larger than
// that gets a segment of its own, which grows to hold it). Its default is
// 8 MiB, and a start reads each of the two or three open segments it keeps
// prepared whole: 24 MiB read on every restart, 50-65 ms of it. Smaller is
// not free: every segment filled is closed and the next one prepared (a file
// allocated and synced), and 64 KiB consensus-key values from 50 clients ran
// at 0.58x of their rate with 8 MiB segments when segments were 1 MiB, 0.90x
// at 4 MiB, whose start spends about 30 ms more than 1 MiB's and 50 ms less
// than 8 MiB's (docs/control-plane.md, "Driven by libraft").
constexpr size_t kRaftSegmentBytes = 4u << 20;

// Without --cluster-secret (allowed only on loopback without accounts) the
// transport still runs its handshake, keyed with this public constant: it
// keeps one code path, and authenticates nothing.
constexpr char kPublicSecret[] = "logkv: no cluster secret";
constexpr uint64_t kTickMs = 100;
// How long a submission waits for a leader to be known (a node that just
// started hears from it within a heartbeat or an election).
constexpr absl::Duration kLeaderWait = absl::Seconds(5);
// How long a removed member stays in the Raft configuration (as a standby),
// so that the commit of its removal reaches it.
constexpr absl::Duration kRemovalGrace = absl::Seconds(2);

const char* RaftStateName(int state) {
  switch (state) {
    case RAFT_LEADER:
      return "leader";
    case RAFT_FOLLOWER:
      return "follower";
    case RAFT_CANDIDATE:
      return "candidate";
    default:
      return "unavailable";
  }
}

const char* RaftRoleName(int role) {
  switch (role) {
    case RAFT_VOTER:
      return "voter";
    case RAFT_STANDBY:
      return "standby";
    case RAFT_SPARE:
      return "spare";
    default:
      return "none";
  }
}

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path.string(), " does not exist"));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("reading ", path.string(), " failed"));
  return contents.str();
}

// The ports the kernel hands out by itself, to bind(0) and to outgoing
// connections (Linux's default is 32768-60999).
std::pair<int, int> EphemeralPortRange() {
  std::pair<int, int> range{32768, 60999};
  absl::StatusOr<std::string> text = ReadFile("/proc/sys/net/ipv4/ip_local_port_range");
  if (!text.ok()) return range;
  std::vector<absl::string_view> fields =
      absl::StrSplit(*text, absl::ByAnyChar(" \t\n"), absl::SkipEmpty());
  int low = 0;
  int high = 0;
  if (fields.size() == 2 && absl::SimpleAtoi(fields[0], &low) &&
      absl::SimpleAtoi(fields[1], &high) && 0 < low && low <= high && high <= 65535) {
    range = {low, high};
  }
  return range;
}

// Whether port is free on host now: a bind that is undone at once.
bool PortIsFree(const sockaddr_in& host, int port) {
  sockaddr_in address = host;
  address.sin_port = htons(static_cast<uint16_t>(port));
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool bound = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  ::close(fd);
  return bound;
}

// A port free on host (IPv4) when asked, for the control transport, which
// keeps it for the node's life (the Raft configuration names the node by
// it). It is drawn from above the kernel's ephemeral range: a port from
// that range, free while the node is down, may be taken by any program's
// bind(0) or outgoing connection, and the restart then cannot listen. Below
// the range live fixed services (databases, exporters, node ports), whose
// port a down service would lose for good: not drawn from. Where nothing
// lies above the range (a host that widened it to 65535), the kernel picks.
absl::StatusOr<int> PickFreePort(const std::string& host) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  if (inet_pton(AF_INET, host.c_str(), &address.sin_addr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("control plane: '", host, "' is not an IPv4 address"));
  }
  if (sodium_init() < 0) return absl::InternalError("libsodium failed to initialise");
  constexpr int kTries = 64;
  const int first = EphemeralPortRange().second + 1;
  constexpr int kLast = 65535;
  for (int i = 0; first <= kLast && i < kTries; ++i) {
    const int port =
        first + static_cast<int>(randombytes_uniform(static_cast<uint32_t>(kLast - first + 1)));
    if (PortIsFree(address, port)) return port;
  }
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  socklen_t length = sizeof(address);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::InternalError(
        absl::StrCat("choosing a control-plane port on ", host, ": ", strerror(error)));
  }
  ::close(fd);
  return ntohs(address.sin_port);
}

struct Identity {
  uint64_t raft_id = 0;
  int port = 0;
};

// identity: "raft_id <id>\nport <port>\n".
absl::StatusOr<Identity> ParseIdentity(absl::string_view text, const std::string& where) {
  Identity identity;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ');
    if (fields.size() != 2) continue;
    if (fields[0] == "raft_id") (void)absl::SimpleAtoi(fields[1], &identity.raft_id);
    if (fields[0] == "port") (void)absl::SimpleAtoi(fields[1], &identity.port);
  }
  if (identity.raft_id == 0 || identity.port <= 0 || identity.port > 65535) {
    return absl::DataLossError(absl::StrCat(where, " is damaged: it names no raft id or port"));
  }
  return identity;
}

}  // namespace

// Writes a small file so that a crash leaves the old contents or the new,
// never a part: a temporary file, fsync, rename, fsync of the directory.
absl::Status WriteFileAtomically(const std::string& file, absl::string_view contents) {
  const fs::path path(file);
  const fs::path temporary = path.string() + ".tmp";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("open ", temporary.string(), ": ", strerror(errno)));
  }
  size_t written = 0;
  while (written < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + written, contents.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat("write ", temporary.string(), ": ", strerror(error)));
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat("fsync ", temporary.string(), ": ", strerror(error)));
  }
  ::close(fd);
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("rename ", temporary.string(), ": ", strerror(errno)));
  }
  const int dir = ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return absl::OkStatus();
}

class ControlPlane::Impl {
 public:
  Impl(ControlPlaneOptions options, Member* self) : options_(std::move(options)), self_(self) {}

  absl::Status Start();
  void Stop();

  std::shared_ptr<const ClusterConfig> config() const {
    absl::MutexLock lock(&config_mu_);
    return published_;
  }
  uint64_t epoch() const { return published_epoch_.load(std::memory_order_acquire); }
  ControlStatus Status() const {
    absl::MutexLock lock(&status_mu_);
    ControlStatus status = status_;
    status.epoch = config()->epoch;
    return status;
  }

  // Runs task on the control thread.
  // Runs task on the control thread; once the loop is closed, at once
  // here (each task then finds closing_ set and fails fast).
  void Post(std::function<void()> task) {
    {
      absl::MutexLock lock(&tasks_mu_);
      if (!loop_closed_) {
        tasks_.push_back(std::move(task));
        uv_async_send(&wake_);
        return;
      }
    }
    task();
  }

  void Submit(std::string command, std::function<void(absl::StatusOr<uint64_t>)> done);
  absl::Status ReloadTls() {
    return transport_ != nullptr ? transport_->ReloadTls() : absl::OkStatus();
  }
  void ProposeLocal(std::string command, std::function<void(absl::StatusOr<uint64_t>)> done);

  AccountState& accounts() { return state_.accounts(); }
  AclState& access() { return state_.access(); }
  KvState& kv() { return state_.kv(); }
  const std::optional<std::vector<std::string>>& saved_consensus_prefixes() const {
    return saved_consensus_prefixes_;
  }
  std::string cluster_id() const ABSL_LOCKS_EXCLUDED(cluster_id_mu_) {
    absl::MutexLock lock(&cluster_id_mu_);
    return cluster_id_;
  }
  AuditState& audit() { return state_.audit(); }
  AuditLog* audit_log() { return audit_log_.get(); }
  std::string StateSnapshot() const { return state_.Snapshot(); }

 private:
  struct Waiting {
    std::string command;
    std::function<void(absl::StatusOr<uint64_t>)> done;
    absl::Time deadline;
  };
  void Route(Waiting submission);
  std::vector<Waiting> waiting_;  // control thread: submissions awaiting a leader

  struct Proposal {
    struct raft_apply req {};
    std::function<void(absl::StatusOr<uint64_t>)> done;
    absl::Time started;
    Impl* impl = nullptr;
    bool from_reconciler = false;
  };

  // Control thread only, below.
  void RunTasks();
  void Propose(std::string command, std::function<void(absl::StatusOr<uint64_t>)> done,
               bool from_reconciler);
  void OnApplied();
  // OK while the file system of the Raft log has kDiskReserveBytes free.
  absl::Status DiskRoom() const;
  void Tick();
  void Reconcile();
  bool StartChange(const char* what, int rv);
  void TransferLeadership();
  void UpdateStatus();
  const raft_server* RaftServer(uint64_t raft_id) const;
  bool Alive(const Member& member) const {
    return member.raft_id == raft_.id || !options_.is_alive || options_.is_alive(member.node_id);
  }

  ControlPlaneOptions options_;
  Member* self_;
  fs::path dir_;
  // The consensus prefixes as kept in <dir>/consensus_prefixes at Start
  // (nullopt: none kept); whether the file holds them (control thread).
  std::optional<std::vector<std::string>> saved_consensus_prefixes_;
  bool consensus_prefixes_saved_ = false;
  // The cluster's id (ControlPlane::cluster_id), read by the transports'
  // handshakes on other threads.
  mutable absl::Mutex cluster_id_mu_;
  std::string cluster_id_ ABSL_GUARDED_BY(cluster_id_mu_);

  uv_loop_t loop_{};
  uv_async_t wake_{};
  uv_timer_t tick_{};
  std::thread thread_;
  bool loop_ready_ = false;
  bool started_ = false;

  absl::Mutex tasks_mu_;
  std::vector<std::function<void()>> tasks_ ABSL_GUARDED_BY(tasks_mu_);
  // Set once the loop no longer runs (before Start, after Stop): Post runs
  // tasks inline instead of waking a closed handle.
  bool loop_closed_ ABSL_GUARDED_BY(tasks_mu_) = true;

  ControlState state_;
  RaftFsm fsm_{&state_};
  std::unique_ptr<AuditLog> audit_log_;  // set in Start, before Raft applies
  std::unique_ptr<AuthenticatedTransport> transport_;
  struct raft_io io_ {};
  struct raft raft_ {};
  bool raft_initialized_ = false;
  std::atomic<bool> closing_{false};  // set on the control thread; read by inline tasks

  mutable absl::Mutex config_mu_;
  std::shared_ptr<const ClusterConfig> published_ ABSL_GUARDED_BY(config_mu_);
  // published_->epoch, stored under config_mu_ with it (epoch()).
  std::atomic<uint64_t> published_epoch_{0};

  mutable absl::Mutex status_mu_;
  ControlStatus status_ ABSL_GUARDED_BY(status_mu_);

  // The reconciler's one change or command in flight (control thread).
  struct raft_change change_ {};
  struct raft_transfer transfer_ {};
  bool change_pending_ = false;
  bool transfer_pending_ = false;
  // Raft servers whose member is removed, and when this leader first saw
  // it: a removed server stays in Raft a little (kRemovalGrace), so that
  // the commit of its removal reaches it and it stops coordinating under
  // the configuration before (a node that left stays a gateway).
  std::map<raft_id, absl::Time> removed_seen_;
  bool command_pending_ = false;
  uint64_t last_leader_ = 0;
  uint64_t leader_changes_ = 0;
  uint64_t proposals_ = 0;
  uint64_t proposals_failed_ = 0;
  double apply_seconds_sum_ = 0;
};

absl::Status ControlPlane::Impl::Start() {
  dir_ = options_.dir;
  std::error_code error;
  fs::create_directories(dir_ / "raft", error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("control plane: creating ", (dir_ / "raft").string(), ": ", error.message()));
  }
  // The identity: made once, kept.
  const fs::path identity_path = dir_ / "identity";
  bool new_identity = false;  // a first start on this directory
  Identity identity;
  absl::StatusOr<std::string> identity_text = ReadFile(identity_path);
  if (identity_text.ok()) {
    absl::StatusOr<Identity> parsed = ParseIdentity(*identity_text, identity_path.string());
    if (!parsed.ok()) return parsed.status();
    identity = *parsed;
    if (options_.port != 0 && options_.port != identity.port) {
      return absl::FailedPreconditionError(absl::StrCat(
          "control plane: this node's Raft address has port ", identity.port, " (",
          identity_path.string(), "), not ", options_.port,
          ": the cluster knows it by that port; start with --control-port=", identity.port));
    }
  } else if (absl::IsNotFound(identity_text.status())) {
    new_identity = true;
    if (sodium_init() < 0) return absl::InternalError("libsodium failed to initialise");
    while (identity.raft_id == 0) randombytes_buf(&identity.raft_id, sizeof(identity.raft_id));
    identity.port = options_.port;
    if (identity.port == 0) {
      absl::StatusOr<int> port = PickFreePort(options_.listen_host);
      if (!port.ok()) return port.status();
      identity.port = *port;
    }
    if (absl::Status s = WriteFileAtomically(
            identity_path.string(),
            absl::StrCat("raft_id ", identity.raft_id, "\nport ", identity.port, "\n"));
        !s.ok()) {
      return s;
    }
  } else {
    return identity_text.status();
  }
  const std::string host =
      options_.advertise_host.empty() ? options_.listen_host : options_.advertise_host;
  self_->raft_id = identity.raft_id;
  self_->control_address = absl::StrCat(host, ":", identity.port);

  // The consensus prefixes, once committed and applied here (they never
  // change): a restarted node routes by them before Raft has replayed.
  if (absl::StatusOr<std::string> saved = ReadFile(dir_ / "consensus_prefixes"); saved.ok()) {
    std::vector<std::string> prefixes;
    for (absl::string_view line : absl::StrSplit(*saved, '\n', absl::SkipEmpty())) {
      std::string prefix;
      if (!absl::CUnescape(line, &prefix)) {
        return absl::DataLossError(absl::StrCat("control plane: ",
                                                (dir_ / "consensus_prefixes").string(),
                                                ": a line is not C-escaped text"));
      }
      prefixes.push_back(std::move(prefix));
    }
    saved_consensus_prefixes_ = std::move(prefixes);
    consensus_prefixes_saved_ = true;
  }

  // The cluster's id: kept once known. A new cluster's first node draws it
  // before anything else, so that from its first handshake it refuses
  // peers of another cluster (it may be a wiped node of one).
  if (absl::StatusOr<std::string> saved = ReadFile(dir_ / "cluster_id"); saved.ok()) {
    const absl::string_view hex = absl::StripAsciiWhitespace(*saved);
    if (hex.size() != 2 * kClusterIdBytes ||
        !std::all_of(hex.begin(), hex.end(), [](char c) { return absl::ascii_isxdigit(c); })) {
      return absl::DataLossError(absl::StrCat("control plane: ", (dir_ / "cluster_id").string(),
                                              ": not a cluster id of ", kClusterIdBytes,
                                              " bytes in hex"));
    }
    absl::MutexLock lock(&cluster_id_mu_);
    cluster_id_ = absl::HexStringToBytes(hex);
  } else if (!absl::IsNotFound(saved.status())) {
    return saved.status();
  } else if (options_.bootstrap && new_identity) {
    std::string id = NewClusterId();
    if (absl::Status s = WriteFileAtomically((dir_ / "cluster_id").string(),
                                             absl::StrCat(absl::BytesToHexString(id), "\n"));
        !s.ok()) {
      return s;
    }
    absl::MutexLock lock(&cluster_id_mu_);
    cluster_id_ = std::move(id);
  }

  // What was applied before the last stop.
  std::shared_ptr<const ClusterConfig> applied = std::make_shared<ClusterConfig>();
  absl::StatusOr<std::string> applied_bytes = ReadFile(dir_ / "applied");
  if (applied_bytes.ok()) {
    absl::StatusOr<ClusterConfig> decoded = ControlState::DecodeSnapshot(*applied_bytes);
    if (!decoded.ok()) {
      return absl::DataLossError(absl::StrCat("control plane: ", (dir_ / "applied").string(),
                                              ": ", decoded.status().message()));
    }
    applied = std::make_shared<ClusterConfig>(std::move(*decoded));
  }
  {
    absl::MutexLock lock(&config_mu_);
    published_ = std::move(applied);
    published_epoch_.store(published_->epoch, std::memory_order_release);
  }

  // The audit chain: the cluster's key, derived from the secret (every
  // member holds it, nothing of it is written), and this node's file, fed
  // by the state machine as Raft applies (replays included: skipped by seq).
  {
    audit::Signer signer = audit::Signer::FromClusterSecret(options_.cluster_secret);
    state_.audit().SetSigner(signer);
    audit_log_ = std::make_unique<AuditLog>(
        AuditLogOptions{.dir = (dir_ / "audit").string(),
                        .retention_entries = options_.audit_retention_entries,
                        .retention_age = options_.audit_retention_age,
                        .on_problem = options_.on_audit_problem},
        std::move(signer));
    if (absl::Status s = audit_log_->Open(); !s.ok()) return s;
    AuditLog* log = audit_log_.get();
    state_.audit().SetListener(AuditState::Listener{
        .on_entries = [log](const std::vector<audit::Entry>& entries) { log->Append(entries); },
        .on_restore = [log](const AuditChainState& chain) { log->Restore(chain); }});
  }

  if (int rv = uv_loop_init(&loop_); rv != 0) {
    return absl::InternalError(absl::StrCat("control plane: uv_loop_init: ", uv_strerror(rv)));
  }
  loop_ready_ = true;
  wake_.data = this;
  uv_async_init(&loop_, &wake_, [](uv_async_t* handle) {
    static_cast<Impl*>(handle->data)->RunTasks();
  });
  tick_.data = this;
  uv_timer_init(&loop_, &tick_);

  TransportOptions transport_options;
  transport_options.cluster_secret =
      options_.cluster_secret.empty() ? std::string(kPublicSecret) : options_.cluster_secret;
  transport_options.tls_cert_file = options_.peer_tls_cert;
  transport_options.tls_key_file = options_.peer_tls_key;
  transport_options.tls_ca_file = options_.peer_tls_ca;
  transport_options.tls_crl_file = options_.peer_tls_crl;
  transport_options.tls_ciphersuites = options_.peer_tls_ciphersuites;
  transport_options.on_refused = options_.on_transport_refused;
  transport_options.cluster_id = [this] { return cluster_id(); };
  transport_ = std::make_unique<AuthenticatedTransport>(&loop_, std::move(transport_options));
  const std::string raft_dir = (dir_ / "raft").string();
  if (int rv = raft_uv_init(&io_, &loop_, raft_dir.c_str(), transport_->transport()); rv != 0) {
    return absl::InternalError(absl::StrCat("control plane: ", io_.errmsg));
  }
  raft_uv_set_segment_size(&io_, kRaftSegmentBytes);
  fsm_.set_on_applied([this] { OnApplied(); });
  if (int rv = raft_init(&raft_, &io_, fsm_.fsm(), identity.raft_id,
                         self_->control_address.c_str());
      rv != 0) {
    std::string message = raft_errmsg(&raft_);
    raft_uv_close(&io_);
    return absl::InternalError(absl::StrCat("control plane: raft_init: ", message));
  }
  raft_initialized_ = true;
  raft_.data = this;
  raft_set_election_timeout(&raft_, options_.election_timeout_ms);
  raft_set_heartbeat_timeout(&raft_, options_.heartbeat_timeout_ms);
  raft_set_snapshot_threshold(&raft_, options_.snapshot_threshold);
  raft_set_snapshot_trailing(&raft_, options_.snapshot_trailing);
  raft_set_pre_vote(&raft_, true);
  if (options_.bootstrap) {
    struct raft_configuration configuration;
    raft_configuration_init(&configuration);
    int rv = raft_configuration_add(&configuration, identity.raft_id,
                                    self_->control_address.c_str(), RAFT_VOTER);
    if (rv == 0) rv = raft_bootstrap(&raft_, &configuration);
    raft_configuration_close(&configuration);
    if (rv != 0 && rv != RAFT_CANTBOOTSTRAP) {  // CANTBOOTSTRAP: state exists, a restart
      return absl::InternalError(
          absl::StrCat("control plane: bootstrap: ", raft_strerror(rv)));
    }
  }
  if (int rv = raft_start(&raft_); rv != 0) {
    // libraft leaves its message empty when the transport fails to listen:
    // the transport's own message says why (a port taken, say).
    std::string message = raft_errmsg(&raft_);
    if (message.empty()) message = transport_->transport()->errmsg;
    if (message.empty()) message = raft_strerror(rv);
    return absl::InternalError(absl::StrCat("control plane: raft_start: ", message));
  }
  uv_timer_start(&tick_, [](uv_timer_t* timer) { static_cast<Impl*>(timer->data)->Tick(); },
                 kTickMs, kTickMs);
  UpdateStatus();
  started_ = true;
  {
    absl::MutexLock lock(&tasks_mu_);
    loop_closed_ = false;
  }
  thread_ = std::thread([this] { uv_run(&loop_, UV_RUN_DEFAULT); });
  return absl::OkStatus();
}

void ControlPlane::Impl::Stop() {
  if (!loop_ready_) return;
  if (started_) {
    Post([this] {
      closing_ = true;
      uv_timer_stop(&tick_);
      std::vector<Waiting> waiting;
      waiting.swap(waiting_);
      for (Waiting& submission : waiting) {
        submission.done(absl::UnavailableError("the control plane is stopping"));
      }
      raft_close(&raft_, [](struct raft* raft) {
        auto* self = static_cast<Impl*>(raft->data);
        raft_uv_close(&self->io_);
        uv_close(reinterpret_cast<uv_handle_t*>(&self->tick_), nullptr);
        {
          // From here tasks run where they are posted (and fail fast).
          absl::MutexLock lock(&self->tasks_mu_);
          self->loop_closed_ = true;
        }
        uv_close(reinterpret_cast<uv_handle_t*>(&self->wake_), nullptr);
      });
    });
    thread_.join();
    started_ = false;
    // Reads waiting for this node to apply the log end here.
    state_.kv().Stop();
  } else {
    // Start failed part way: close what it opened on this thread.
    if (raft_initialized_) {
      bool closed = false;
      raft_.data = &closed;
      raft_close(&raft_, [](struct raft* raft) { *static_cast<bool*>(raft->data) = true; });
      while (!closed) uv_run(&loop_, UV_RUN_ONCE);
      raft_uv_close(&io_);
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&wake_), nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
  }
  // Work posted while closing fails fast rather than waiting forever.
  closing_ = true;
  RunTasks();
  uv_loop_close(&loop_);
  loop_ready_ = false;
}

void ControlPlane::Impl::RunTasks() {
  std::vector<std::function<void()>> tasks;
  {
    absl::MutexLock lock(&tasks_mu_);
    tasks.swap(tasks_);
  }
  for (auto& task : tasks) task();
}

void ControlPlane::Impl::Submit(std::string command,
                                std::function<void(absl::StatusOr<uint64_t>)> done) {
  Post([this, command = std::move(command), done = std::move(done)]() mutable {
    Route(Waiting{std::move(command), std::move(done), absl::Now() + kLeaderWait});
  });
}

// To the leader: proposed here when this node leads, forwarded when another
// does, and held (re-tried every tick) while none is known, as after a
// restart, until a leader is heard of or the wait ends.
void ControlPlane::Impl::Route(Waiting submission) {
  if (closing_) {
    submission.done(absl::UnavailableError("the control plane is stopping"));
    return;
  }
  if (raft_state(&raft_) == RAFT_LEADER) {
    Propose(std::move(submission.command), std::move(submission.done),
            /*from_reconciler=*/false);
    return;
  }
  raft_id leader = 0;
  const char* leader_address = nullptr;
  raft_leader(&raft_, &leader, &leader_address);
  std::string binary_address;
  if (leader != 0) {
    for (const auto& [id, member] : config()->members) {
      if (member.raft_id == leader) binary_address = member.binary_address;
    }
  }
  if (!binary_address.empty() && options_.forward) {
    options_.forward(binary_address, std::move(submission.command), std::move(submission.done));
    return;
  }
  if (absl::Now() < submission.deadline) {
    waiting_.push_back(std::move(submission));
    return;
  }
  submission.done(absl::UnavailableError(
      leader == 0 ? "the control plane has no leader at the moment: try again"
                  : "the control plane's leader is not reachable from this node"));
}

absl::Status ControlPlane::Impl::DiskRoom() const {
  struct statvfs fs {};
  if (::statvfs(dir_.c_str(), &fs) != 0) return absl::OkStatus();  // unknown: libraft will tell
  const uint64_t available = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  if (available >= kDiskReserveBytes) return absl::OkStatus();
  return protocol::InsufficientStorageError(absl::StrCat(
      "the control plane's disk is full: ", available >> 20, " MiB free, and it keeps ",
      kDiskReserveBytes >> 20, " MiB for its Raft log (free space, then retry)"));
}

void ControlPlane::Impl::ProposeLocal(std::string command,
                                      std::function<void(absl::StatusOr<uint64_t>)> done) {
  Post([this, command = std::move(command), done = std::move(done)]() mutable {
    if (closing_) {
      done(absl::UnavailableError("the control plane is stopping"));
      return;
    }
    Propose(std::move(command), std::move(done), /*from_reconciler=*/false);
  });
}

void ControlPlane::Impl::Propose(std::string command,
                                 std::function<void(absl::StatusOr<uint64_t>)> done,
                                 bool from_reconciler) {
  if (raft_state(&raft_) != RAFT_LEADER) {
    if (from_reconciler) command_pending_ = false;
    done(absl::UnavailableError("this node does not lead the control plane"));
    return;
  }
  // A disk about to fill is refused here, before libraft writes: libraft
  // 0.15 crashes (SIGSEGV) when several of a leader's appends fail together,
  // which concurrent proposals on a full disk make happen.
  if (absl::Status room = DiskRoom(); !room.ok()) {
    if (from_reconciler) command_pending_ = false;
    ++proposals_failed_;
    done(std::move(room));
    return;
  }
  auto* proposal = new Proposal;
  proposal->req.data = proposal;
  proposal->done = std::move(done);
  proposal->started = absl::Now();
  proposal->impl = this;
  proposal->from_reconciler = from_reconciler;
  const int rv = ProposeCommand(&raft_, &proposal->req, command,
                                [](struct raft_apply* req, int status, void* result) {
                                  std::unique_ptr<Proposal> proposal(
                                      static_cast<Proposal*>(req->data));
                                  Impl* impl = proposal->impl;
                                  absl::StatusOr<uint64_t> answer =
                                      status == 0 ? RaftFsm::ResultOf(result)
                                                  : absl::StatusOr<uint64_t>(absl::UnavailableError(
                                                        absl::StrCat("the control plane: ",
                                                                     raft_strerror(status))));
                                  if (status == 0) {
                                    const double seconds =
                                        absl::ToDoubleSeconds(absl::Now() - proposal->started);
                                    impl->apply_seconds_sum_ += seconds;
                                    if (impl->options_.on_applied) {
                                      impl->options_.on_applied(seconds);
                                    }
                                  } else {
                                    ++impl->proposals_failed_;
                                  }
                                  if (proposal->from_reconciler) impl->command_pending_ = false;
                                  proposal->done(std::move(answer));
                                });
  if (rv != 0) {
    std::unique_ptr<Proposal> failed(proposal);
    if (from_reconciler) command_pending_ = false;
    ++proposals_failed_;
    failed->done(absl::UnavailableError(absl::StrCat("the control plane: ", raft_strerror(rv))));
    return;
  }
  ++proposals_;
}

void ControlPlane::Impl::OnApplied() {
  if (!consensus_prefixes_saved_ && state_.kv().committed()) {
    std::string lines;
    for (const std::string& prefix : state_.kv().prefixes()) {
      absl::StrAppend(&lines, absl::CHexEscape(prefix), "\n");
    }
    // A failure is not fatal: the prefixes come back from the Raft log.
    consensus_prefixes_saved_ =
        WriteFileAtomically((dir_ / "consensus_prefixes").string(), lines).ok();
  }
  ClusterConfig current = state_.Current();
  {
    absl::MutexLock lock(&config_mu_);
    if (current.epoch <= published_->epoch) return;  // a replay of what was published
  }
  if (!current.cluster_id.empty() && current.cluster_id != cluster_id()) {
    // A failure is not fatal: the id comes back from the Raft log.
    (void)WriteFileAtomically((dir_ / "cluster_id").string(),
                              absl::StrCat(absl::BytesToHexString(current.cluster_id), "\n"));
    absl::MutexLock lock(&cluster_id_mu_);
    cluster_id_ = current.cluster_id;
  }
  const std::string bytes = ControlState::EncodeSnapshot(current);
  {
    absl::MutexLock lock(&config_mu_);
    published_ = std::make_shared<ClusterConfig>(std::move(current));
    published_epoch_.store(published_->epoch, std::memory_order_release);
  }
  // Kept before anyone acts on it, so that a restart finds at least this
  // epoch. A failure to keep it is logged by the caller's hook (the
  // configuration is still replayed from the Raft log at the next start).
  (void)WriteFileAtomically((dir_ / "applied").string(), bytes);
  if (options_.on_change) options_.on_change();
}

void ControlPlane::Impl::Tick() {
  if (closing_) return;
  UpdateStatus();
  state_.kv().Expire(absl::Now());
  std::vector<Waiting> waiting;
  waiting.swap(waiting_);
  for (Waiting& submission : waiting) Route(std::move(submission));
  Reconcile();
}

const raft_server* ControlPlane::Impl::RaftServer(uint64_t raft_id) const {
  for (unsigned i = 0; i < raft_.configuration.n; ++i) {
    if (raft_.configuration.servers[i].id == raft_id) return &raft_.configuration.servers[i];
  }
  return nullptr;
}

bool ControlPlane::Impl::StartChange(const char* what, int rv) {
  if (rv == 0) {
    change_pending_ = true;
    return true;
  }
  // RAFT_CANTCHANGE (a change not yet committed) and the like: the next
  // tick tries again.
  (void)what;
  return false;
}

// The leader's reconciler: one step per call, read from the committed state.
void ControlPlane::Impl::Reconcile() {
  if (raft_state(&raft_) != RAFT_LEADER || change_pending_ || command_pending_ ||
      transfer_pending_) {
    return;
  }
  // A change of configuration is in flight until Raft commits it.
  if (raft_.configuration_uncommitted_index != 0) return;
  const ClusterConfig config = state_.Current();
  auto run = [this](std::string command) {
    command_pending_ = true;
    Propose(std::move(command), [](absl::StatusOr<uint64_t>) {}, /*from_reconciler=*/true);
  };
  // The first node of a new cluster adds itself.
  if (config.Find(self_->node_id) == nullptr) {
    bool taken = false;
    for (const auto& [id, member] : config.members) taken |= member.raft_id == raft_.id;
    if (!taken) run(EncodeAddMember(*self_));
    return;
  }
  auto change_done = [](struct raft_change* req, int status) {
    auto* impl = static_cast<Impl*>(req->data);
    impl->change_pending_ = false;
    (void)status;  // a failed change is retried from the state at the next tick
  };
  change_.data = this;
  const Member* self_member = nullptr;
  for (const auto& [id, member] : config.members) {
    if (member.raft_id == raft_.id) self_member = &member;
  }
  auto other_voters = [this] {
    unsigned count = 0;
    for (unsigned i = 0; i < raft_.configuration.n; ++i) {
      const raft_server& server = raft_.configuration.servers[i];
      if (server.role == RAFT_VOTER && server.id != raft_.id) ++count;
    }
    return count;
  };
  // A member that may vote and does not: the replacement of a voter that goes.
  auto replacement = [&]() -> const Member* {
    for (const auto& [id, member] : config.members) {
      const raft_server* server = RaftServer(member.raft_id);
      if ((member.state == MemberState::kActive || member.state == MemberState::kJoining) &&
          server != nullptr && server->role != RAFT_VOTER && Alive(member)) {
        return &member;
      }
    }
    return nullptr;
  };
  // Servers Raft holds that are no longer members (or never were). A voter
  // goes in steps that keep a quorum: a replacement is promoted first, then
  // it is demoted, then removed; the leader hands over leadership first.
  for (unsigned i = 0; i < raft_.configuration.n; ++i) {
    const raft_server& server = raft_.configuration.servers[i];
    const Member* member = nullptr;
    for (const auto& [id, candidate] : config.members) {
      if (candidate.raft_id == server.id) member = &candidate;
    }
    if (member != nullptr && member->state != MemberState::kRemoved) continue;
    if (member == nullptr && server.id == raft_.id) continue;  // a bootstrapped leader
    if (server.id == raft_.id) {
      // The leader itself was removed: another voter takes over and
      // removes it. With no other voter, one is promoted first (below).
      if (other_voters() > 0) {
        TransferLeadership();
        return;
      }
      continue;
    }
    if (server.role == RAFT_VOTER) {
      if (const Member* next = replacement(); next != nullptr) {
        StartChange("promote",
                    raft_assign(&raft_, &change_, next->raft_id, RAFT_VOTER, change_done));
      } else {
        StartChange("demote",
                    raft_assign(&raft_, &change_, server.id, RAFT_STANDBY, change_done));
      }
      return;
    }
    auto [seen, inserted] = removed_seen_.emplace(server.id, absl::Now());
    if (absl::Now() - seen->second < kRemovalGrace) continue;
    removed_seen_.erase(seen);
    StartChange("remove", raft_remove(&raft_, &change_, server.id, change_done));
    return;
  }
  // Members Raft does not hold yet.
  for (const auto& [id, member] : config.members) {
    if (member.state == MemberState::kRemoved || member.control_address.empty()) continue;
    if (RaftServer(member.raft_id) != nullptr) continue;
    StartChange("add", raft_add(&raft_, &change_, member.raft_id, member.control_address.c_str(),
                                change_done));
    return;
  }
  // Voters: the current ones that may stay, then live members by node id,
  // up to max_voters. Leaving and removed members do not vote.
  std::vector<const Member*> wanted;
  auto eligible = [&](const Member& member) {
    return (member.state == MemberState::kActive || member.state == MemberState::kJoining) &&
           RaftServer(member.raft_id) != nullptr;
  };
  for (const auto& [id, member] : config.members) {
    const raft_server* server = RaftServer(member.raft_id);
    if (eligible(member) && server->role == RAFT_VOTER) wanted.push_back(&member);
  }
  for (const auto& [id, member] : config.members) {
    const raft_server* server = RaftServer(member.raft_id);
    if (eligible(member) && server->role != RAFT_VOTER && Alive(member)) wanted.push_back(&member);
  }
  const size_t voters = std::min<size_t>(std::max(options_.max_voters, 1), wanted.size());
  wanted.resize(voters);
  auto is_wanted = [&](uint64_t raft_id) {
    return std::any_of(wanted.begin(), wanted.end(),
                       [raft_id](const Member* m) { return m->raft_id == raft_id; });
  };
  for (const Member* member : wanted) {
    if (RaftServer(member->raft_id)->role == RAFT_VOTER) continue;
    StartChange("promote",
                raft_assign(&raft_, &change_, member->raft_id, RAFT_VOTER, change_done));
    return;
  }
  for (unsigned i = 0; i < raft_.configuration.n; ++i) {
    const raft_server& server = raft_.configuration.servers[i];
    if (is_wanted(server.id) || server.role == RAFT_STANDBY) continue;
    if (server.role == RAFT_VOTER && wanted.empty()) continue;  // never the last voter
    if (server.id == raft_.id && server.role == RAFT_VOTER) {
      if (other_voters() > 0) TransferLeadership();
      return;
    }
    // Not a voter: a standby, so that it still receives the log.
    StartChange("demote", raft_assign(&raft_, &change_, server.id, RAFT_STANDBY, change_done));
    return;
  }
  (void)self_member;
  // A joining member becomes active by its own ActivateMember, once it is
  // filled with its keys (docs/cluster.md, "Membership changes"); only the
  // first member of a new cluster, with nobody to fill it, is activated here.
  if (config.CountInState(MemberState::kActive) > 0 ||
      config.CountInState(MemberState::kLeaving) > 0) {
    return;
  }
  for (const auto& [id, member] : config.members) {
    if (member.state != MemberState::kJoining) continue;
    const raft_server* server = RaftServer(member.raft_id);
    if (server == nullptr && !member.control_address.empty()) continue;
    run(EncodeActivateMember(member.node_id));
    return;
  }
}

// Hands leadership to another voter (libraft picks the most up to date).
void ControlPlane::Impl::TransferLeadership() {
  if (transfer_pending_) return;
  transfer_.data = this;
  const int rv = raft_transfer(&raft_, &transfer_, 0, [](struct raft_transfer* req) {
    static_cast<Impl*>(req->data)->transfer_pending_ = false;
  });
  transfer_pending_ = rv == 0;
}

void ControlPlane::Impl::UpdateStatus() {
  raft_id leader = 0;
  const char* leader_address = nullptr;
  raft_leader(&raft_, &leader, &leader_address);
  if (leader != 0 && leader != last_leader_) {
    ++leader_changes_;
  }
  if (leader != 0) last_leader_ = leader;
  ControlStatus status;
  status.raft_id = raft_.id;
  status.address = self_->control_address;
  status.raft_state = RaftStateName(raft_state(&raft_));
  const raft_server* self_server = RaftServer(raft_.id);
  status.role = self_server == nullptr ? "none" : RaftRoleName(self_server->role);
  status.term = raft_.current_term;
  status.commit_index = raft_.commit_index;
  status.applied_index = raft_last_applied(&raft_);
  status.last_index = raft_last_index(&raft_);
  status.leader_raft_id = leader;
  for (const auto& [id, member] : config()->members) {
    if (leader != 0 && member.raft_id == leader) status.leader_node_id = member.node_id;
  }
  for (unsigned i = 0; i < raft_.configuration.n; ++i) {
    const raft_server& server = raft_.configuration.servers[i];
    if (server.role == RAFT_VOTER) ++status.voters;
    status.roles.emplace_back(server.id, RaftRoleName(server.role));
  }
  status.leader_changes = leader_changes_;
  status.commands_applied = fsm_.commands_applied();
  status.snapshots_taken = fsm_.snapshots_taken();
  status.snapshots_restored = fsm_.snapshots_restored();
  status.proposals = proposals_;
  status.proposals_failed = proposals_failed_;
  status.apply_seconds_sum = apply_seconds_sum_;
  absl::MutexLock lock(&status_mu_);
  status_ = std::move(status);
}

// ---- ControlPlane ----------------------------------------------------------

ControlPlane::ControlPlane(ControlPlaneOptions options) {
  self_ = options.self;
  impl_ = std::make_unique<Impl>(std::move(options), &self_);
}

ControlPlane::~ControlPlane() { Stop(); }

absl::Status ControlPlane::Start() {
  absl::Status status = impl_->Start();
  if (!status.ok()) impl_->Stop();
  return status;
}

void ControlPlane::Stop() { impl_->Stop(); }
absl::Status ControlPlane::ReloadTls() { return impl_->ReloadTls(); }

std::shared_ptr<const ClusterConfig> ControlPlane::config() const { return impl_->config(); }
uint64_t ControlPlane::epoch() const { return impl_->epoch(); }

AccountState* ControlPlane::accounts() { return &impl_->accounts(); }
AuditState* ControlPlane::audit() { return &impl_->audit(); }
AuditLog* ControlPlane::audit_log() { return impl_->audit_log(); }

AclState* ControlPlane::access() { return &impl_->access(); }

KvState* ControlPlane::kv() { return &impl_->kv(); }

std::string ControlPlane::cluster_id() const { return impl_->cluster_id(); }

const std::vector<std::string>* ControlPlane::saved_consensus_prefixes() const {
  const std::optional<std::vector<std::string>>& saved = impl_->saved_consensus_prefixes();
  return saved.has_value() ? &*saved : nullptr;
}

std::string ControlPlane::StateSnapshot() { return impl_->StateSnapshot(); }

ControlStatus ControlPlane::Status() const { return impl_->Status(); }

void ControlPlane::Submit(std::string command,
                          std::function<void(absl::StatusOr<uint64_t>)> done) {
  impl_->Submit(std::move(command), std::move(done));
}

void ControlPlane::ProposeLocal(std::string command,
                                std::function<void(absl::StatusOr<uint64_t>)> done) {
  impl_->ProposeLocal(std::move(command), std::move(done));
}

absl::StatusOr<uint64_t> ControlPlane::SubmitAndWait(std::string command, absl::Duration timeout) {
  struct Answer {
    absl::Notification done;
    absl::StatusOr<uint64_t> result = absl::UnknownError("no answer");
  };
  auto answer = std::make_shared<Answer>();
  Submit(std::move(command), [answer](absl::StatusOr<uint64_t> result) {
    answer->result = std::move(result);
    answer->done.Notify();
  });
  if (!answer->done.WaitForNotificationWithTimeout(timeout)) {
    return absl::DeadlineExceededError("the control plane did not answer in time");
  }
  return answer->result;
}

absl::Status ControlPlane::WaitForSelf(std::initializer_list<MemberState> states,
                                       absl::Time deadline) const {
  while (true) {
    std::shared_ptr<const ClusterConfig> config = impl_->config();
    const Member* member = config->Find(self_.node_id);
    if (member != nullptr && member->raft_id == self_.raft_id &&
        std::find(states.begin(), states.end(), member->state) != states.end()) {
      return absl::OkStatus();
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "this node (", self_.node_id, ") is not ",
          member == nullptr ? "a member" : "in the state awaited", " of the control plane yet"));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

}  // namespace logkv::server::control
