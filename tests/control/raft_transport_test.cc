// The authenticated raft_uv_transport on loopback: the handshake alone
// (right secret, wrong secret either way, garbage), over mutual TLS (the
// cluster CA both ways; refusals of another CA's certificate, of a
// certificate that does not name the address a peer claims or dials, of a
// plaintext peer), and two real libraft servers (libuv backend, temporary
// directories, ports chosen at run time) electing a leader and replicating a
// command through it, in plaintext and over TLS. Certificates are made at
// run time by tools/make-certs.sh. Waits are bounded in real time; nothing
// is asserted about how long anything takes.
extern "C" {
#include <raft.h>
#include <raft/uv.h>
}
#include <uv.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/control/control_state.h"
#include "server/control/raft_fsm.h"
#include "server/control/raft_transport.h"
#include "tests/server/logkvd_process.h"

namespace logkv::server::control {
namespace {

constexpr absl::Duration kBound = absl::Seconds(30);

TransportOptions SecretOnly(const std::string& secret) {
  TransportOptions options;
  options.cluster_secret = secret;
  return options;
}

// A CA with certificates made by tools/make-certs.sh in a temporary
// directory: "node" names 127.0.0.1, "intruder" only intruder.example; the
// other CA's "mallory" names 127.0.0.1.
class Certificates {
 public:
  Certificates() {
    std::string pattern = (std::filesystem::path(::testing::TempDir()) / "certs-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) return;
    dir_ = pattern;
    const std::string script = LOGKV_MAKE_CERTS;
    const std::string d = dir_.string();
    const std::string o = (dir_ / "other").string();
    ok_ = std::system((script + " " + d + " ca >/dev/null 2>&1").c_str()) == 0 &&
          std::system((script + " " + d + " server node 127.0.0.1 >/dev/null 2>&1").c_str()) == 0 &&
          std::system((script + " " + d + " server intruder intruder.example >/dev/null 2>&1")
                          .c_str()) == 0 &&
          std::system((script + " " + o + " ca >/dev/null 2>&1").c_str()) == 0 &&
          std::system((script + " " + o + " server mallory 127.0.0.1 >/dev/null 2>&1").c_str()) == 0;
  }
  ~Certificates() {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  bool ok() const { return ok_; }
  // Options for a node showing certificate `name` (of the other CA when
  // other), trusting the cluster CA.
  TransportOptions Options(const std::string& secret, const std::string& name,
                           bool other = false, std::vector<std::string>* refusals = nullptr) const {
    TransportOptions options = SecretOnly(secret);
    const std::filesystem::path dir = other ? dir_ / "other" : dir_;
    options.tls_cert_file = (dir / (name + ".pem")).string();
    options.tls_key_file = (dir / (name + ".key")).string();
    options.tls_ca_file = (dir_ / "ca.pem").string();
    if (refusals != nullptr) {
      options.on_refused = [refusals](const std::string& why) { refusals->push_back(why); };
    }
    return options;
  }

 private:
  std::filesystem::path dir_;
  bool ok_ = false;
};

class LoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    // Wakes the loop regularly, so a bounded wait notices its deadline even
    // when nothing else happens.
    uv_timer_init(&loop_, &poke_);
    uv_timer_start(&poke_, [](uv_timer_t*) {}, 10, 10);
  }
  void TearDown() override {
    uv_close(reinterpret_cast<uv_handle_t*>(&poke_), nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle was left open";
  }

  bool RunUntil(const std::function<bool()>& done) {
    absl::Time deadline = absl::Now() + kBound;
    while (!done()) {
      if (absl::Now() > deadline) return false;
      uv_run(&loop_, UV_RUN_ONCE);
    }
    return true;
  }

  static std::string Loopback(int port) { return absl::StrCat("127.0.0.1:", port); }

  uv_loop_t loop_{};
  uv_timer_t poke_{};
};

// What the transport's callbacks report.
struct Accepted {
  int count = 0;
  raft_id id = 0;
  std::string address;
};
struct Connected {
  struct raft_uv_connect req {};
  bool done = false;
  int status = -1;
};

void CloseStream(uv_stream_t* stream) {
  uv_close(reinterpret_cast<uv_handle_t*>(stream), [](uv_handle_t* h) { raft_free(h); });
}

void OnAccept(struct raft_uv_transport* t, raft_id id, const char* address, uv_stream_t* stream) {
  auto* accepted = static_cast<Accepted*>(t->data);
  ++accepted->count;
  accepted->id = id;
  accepted->address = address;
  CloseStream(stream);
}

void OnConnect(struct raft_uv_connect* req, uv_stream_t* stream, int status) {
  auto* connected = static_cast<Connected*>(req->data);
  connected->done = true;
  connected->status = status;
  if (stream != nullptr) CloseStream(stream);
}

class TransportTest : public LoopTest {
 protected:
  // A transport that has been through init (and listen, when listening).
  std::unique_ptr<AuthenticatedTransport> Make(raft_id id, const std::string& address,
                                               const std::string& secret, bool listen) {
    return Make(id, address, SecretOnly(secret), listen);
  }
  std::unique_ptr<AuthenticatedTransport> Make(raft_id id, const std::string& address,
                                               TransportOptions options, bool listen) {
    auto transport = std::make_unique<AuthenticatedTransport>(&loop_, std::move(options));
    struct raft_uv_transport* t = transport->transport();
    t->data = &accepted_;
    EXPECT_EQ(t->init(t, id, address.c_str()), 0);
    if (listen) {
      EXPECT_EQ(t->listen(t, &OnAccept), 0) << t->errmsg;
    }
    return transport;
  }

  void Close(AuthenticatedTransport& transport) {
    bool closed = false;
    struct raft_uv_transport* t = transport.transport();
    t->data = &closed;
    t->close(t, [](struct raft_uv_transport* t) { *static_cast<bool*>(t->data) = true; });
    ASSERT_TRUE(RunUntil([&] { return closed; }));
  }

  Accepted accepted_;
};

// A program that drives the transport without logkvd's main or a Node (as
// these tests do) is not killed by SIGPIPE when a peer or the TLS tunnel's
// pipe closes under a write: the write fails with EPIPE instead.
TEST_F(LoopTest, ATransportLeavesSigpipeIgnored) {
  ASSERT_NE(::signal(SIGPIPE, SIG_DFL), SIG_ERR);
  { AuthenticatedTransport transport(&loop_, SecretOnly("s")); }
  struct sigaction now {};
  ASSERT_EQ(::sigaction(SIGPIPE, nullptr, &now), 0);
  EXPECT_EQ(now.sa_handler, SIG_IGN);
}

TEST_F(TransportTest, RightSecretConnects) {
  const std::string listener_address = Loopback(test::PickFreePort());
  const std::string connector_address = Loopback(test::PickFreePort());
  auto listener = Make(1, listener_address, "the secret", /*listen=*/true);
  auto connector = Make(2, connector_address, "the secret", /*listen=*/false);

  Connected connected;
  connected.req.data = &connected;
  struct raft_uv_transport* t = connector->transport();
  ASSERT_EQ(t->connect(t, &connected.req, 1, listener_address.c_str(), &OnConnect), 0);
  ASSERT_TRUE(RunUntil([&] { return connected.done && accepted_.count == 1; }));
  EXPECT_EQ(connected.status, 0);
  EXPECT_EQ(accepted_.id, 2u);
  EXPECT_EQ(accepted_.address, connector_address);
  EXPECT_EQ(connector->connected(), 1u);
  EXPECT_EQ(listener->accepted(), 1u);
  EXPECT_EQ(listener->refused() + connector->refused(), 0u);
  Close(*connector);
  Close(*listener);
}

TEST_F(TransportTest, WrongSecretIsRefusedEitherWay) {
  const std::string right_address = Loopback(test::PickFreePort());
  const std::string wrong_address = Loopback(test::PickFreePort());
  auto right = Make(1, right_address, "the secret", /*listen=*/true);
  auto wrong = Make(2, wrong_address, "not the secret", /*listen=*/true);

  // An impostor connects: it cannot check the listener's proof, gives up,
  // and the listener never hands the stream to libraft.
  Connected impostor;
  impostor.req.data = &impostor;
  struct raft_uv_transport* w = wrong->transport();
  ASSERT_EQ(w->connect(w, &impostor.req, 1, right_address.c_str(), &OnConnect), 0);
  ASSERT_TRUE(RunUntil([&] { return impostor.done && right->refused() == 1; }));
  EXPECT_EQ(impostor.status, RAFT_NOCONNECTION);
  EXPECT_EQ(wrong->refused(), 1u);

  // A member connects to an impostor listening: refused on its side.
  Connected member;
  member.req.data = &member;
  struct raft_uv_transport* r = right->transport();
  ASSERT_EQ(r->connect(r, &member.req, 2, wrong_address.c_str(), &OnConnect), 0);
  ASSERT_TRUE(RunUntil([&] { return member.done && wrong->refused() == 2; }));
  EXPECT_EQ(member.status, RAFT_NOCONNECTION);
  EXPECT_EQ(right->refused(), 2u);

  EXPECT_EQ(accepted_.count, 0);
  EXPECT_EQ(right->accepted() + wrong->accepted() + right->connected() + wrong->connected(), 0u);
  Close(*wrong);
  Close(*right);
}

// The same secret but another cluster id (a wiped first node that started
// a cluster of its own): refused by the listener, with the reason. A node
// without an id yet (joining) is accepted, and accepts.
TEST_F(TransportTest, AnotherClusterIdIsRefused) {
  const std::string ours_address = Loopback(test::PickFreePort());
  const std::string theirs_address = Loopback(test::PickFreePort());
  const std::string joining_address = Loopback(test::PickFreePort());
  std::vector<std::string> refusals;
  auto with_id = [&refusals](std::string id) {
    TransportOptions options = SecretOnly("the secret");
    options.cluster_id = [id] { return id; };
    options.on_refused = [&refusals](const std::string& why) { refusals.push_back(why); };
    return options;
  };
  auto ours = Make(1, ours_address, with_id(std::string(16, 'a')), /*listen=*/true);
  auto theirs = Make(2, theirs_address, with_id(std::string(16, 'b')), /*listen=*/true);
  auto joining = Make(3, joining_address, with_id(""), /*listen=*/true);

  Connected other;
  other.req.data = &other;
  struct raft_uv_transport* t = theirs->transport();
  ASSERT_EQ(t->connect(t, &other.req, 1, ours_address.c_str(), &OnConnect), 0);
  ASSERT_TRUE(RunUntil([&] { return other.done && ours->refused() == 1; }));
  EXPECT_EQ(other.status, RAFT_NOCONNECTION);
  EXPECT_EQ(accepted_.count, 0);
  ASSERT_FALSE(refusals.empty());
  EXPECT_TRUE(absl::StrContains(refusals.front(), "belongs to cluster 62626262")) << refusals.front();

  Connected from_joining;
  from_joining.req.data = &from_joining;
  struct raft_uv_transport* j = joining->transport();
  ASSERT_EQ(j->connect(j, &from_joining.req, 1, ours_address.c_str(), &OnConnect), 0);
  ASSERT_TRUE(RunUntil([&] { return from_joining.done && accepted_.count == 1; }));
  EXPECT_EQ(from_joining.status, 0);

  Connected to_joining;
  to_joining.req.data = &to_joining;
  struct raft_uv_transport* o = ours->transport();
  ASSERT_EQ(o->connect(o, &to_joining.req, 3, joining_address.c_str(), &OnConnect), 0);
  ASSERT_TRUE(RunUntil([&] { return to_joining.done && accepted_.count == 2; }));
  EXPECT_EQ(to_joining.status, 0);
  Close(*joining);
  Close(*theirs);
  Close(*ours);
}

TEST_F(TransportTest, GarbageIsRefusedAndClosed) {
  const std::string address = Loopback(test::PickFreePort());
  auto listener = Make(1, address, "the secret", /*listen=*/true);

  // A plain TCP client sending an HTTP request instead of a hello.
  struct Raw {
    uv_tcp_t tcp{};
    uv_connect_t connect{};
    uv_write_t write{};
    bool eof = false;
    char buffer[64];
  } raw;
  uv_tcp_init(&loop_, &raw.tcp);
  raw.tcp.data = &raw;
  struct sockaddr_in peer;
  ASSERT_EQ(uv_ip4_addr("127.0.0.1", std::atoi(address.substr(10).c_str()), &peer), 0);
  raw.connect.data = &raw;
  ASSERT_EQ(uv_tcp_connect(&raw.connect, &raw.tcp, reinterpret_cast<sockaddr*>(&peer),
                           [](uv_connect_t* req, int status) {
                             ASSERT_EQ(status, 0);
                             auto* raw = static_cast<Raw*>(req->data);
                             static char request[] =
                                 "GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: y\r\nAccept: */*\r\n\r\n";
                             uv_buf_t buf = uv_buf_init(request, sizeof(request) - 1);
                             uv_write(&raw->write, req->handle, &buf, 1, nullptr);
                             uv_read_start(
                                 req->handle,
                                 [](uv_handle_t* h, size_t, uv_buf_t* buf) {
                                   auto* raw = static_cast<Raw*>(h->data);
                                   *buf = uv_buf_init(raw->buffer, sizeof(raw->buffer));
                                 },
                                 [](uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
                                   if (nread < 0) static_cast<Raw*>(s->data)->eof = true;
                                 });
                           }),
            0);
  ASSERT_TRUE(RunUntil([&] { return raw.eof && listener->refused() == 1; }));
  EXPECT_EQ(listener->accepted(), 0u);
  EXPECT_EQ(accepted_.count, 0);
  bool raw_closed = false;
  raw.tcp.data = &raw_closed;
  uv_close(reinterpret_cast<uv_handle_t*>(&raw.tcp),
           [](uv_handle_t* h) { *static_cast<bool*>(h->data) = true; });
  ASSERT_TRUE(RunUntil([&] { return raw_closed; }));
  Close(*listener);
}

bool Mentions(const std::vector<std::string>& lines, const std::string& text) {
  for (const std::string& line : lines) {
    if (line.find(text) != std::string::npos) return true;
  }
  return false;
}

class TlsTransportTest : public TransportTest {
 protected:
  void SetUp() override {
    TransportTest::SetUp();
    ASSERT_TRUE(certs_.ok()) << "tools/make-certs.sh failed";
  }
  Certificates certs_;
  std::vector<std::string> refusals_;
};

TEST_F(TlsTransportTest, ClusterCertificatesConnect) {
  const std::string listener_address = Loopback(test::PickFreePort());
  const std::string connector_address = Loopback(test::PickFreePort());
  auto listener = Make(1, listener_address, certs_.Options("s", "node", false, &refusals_), true);
  auto connector = Make(2, connector_address, certs_.Options("s", "node", false, &refusals_), false);
  ASSERT_TRUE(listener->tls());

  Connected connected;
  connected.req.data = &connected;
  struct raft_uv_transport* t = connector->transport();
  ASSERT_EQ(t->connect(t, &connected.req, 1, listener_address.c_str(), &OnConnect), 0);
  ASSERT_TRUE(RunUntil([&] { return connected.done && accepted_.count == 1; }));
  EXPECT_EQ(connected.status, 0);
  EXPECT_EQ(accepted_.id, 2u);
  EXPECT_EQ(accepted_.address, connector_address);
  EXPECT_EQ(listener->refused() + connector->refused(), 0u);
  EXPECT_TRUE(refusals_.empty()) << refusals_.front();
  Close(*connector);
  Close(*listener);
}

TEST_F(TlsTransportTest, AnotherCasCertificateIsRefused) {
  const std::string listener_address = Loopback(test::PickFreePort());
  auto listener = Make(1, listener_address, certs_.Options("s", "node", false, &refusals_), true);
  // Mallory knows the secret, and her certificate names her address, but it
  // is not of the cluster CA.
  auto mallory = Make(2, Loopback(test::PickFreePort()), certs_.Options("s", "mallory", true), false);
  Connected connected;
  connected.req.data = &connected;
  struct raft_uv_transport* t = mallory->transport();
  ASSERT_EQ(t->connect(t, &connected.req, 1, listener_address.c_str(), &OnConnect), 0);
  ASSERT_TRUE(RunUntil([&] { return connected.done && listener->refused() == 1; }));
  EXPECT_EQ(connected.status, RAFT_NOCONNECTION);
  EXPECT_EQ(accepted_.count, 0);
  ASSERT_FALSE(refusals_.empty());
  EXPECT_TRUE(Mentions(refusals_, "control-plane TLS from 127.0.0.1 refused")) << refusals_[0];
  Close(*mallory);
  Close(*listener);
}

TEST_F(TlsTransportTest, ACertificateNotNamingTheClaimedAddressIsRefused) {
  const std::string listener_address = Loopback(test::PickFreePort());
  auto listener = Make(1, listener_address, certs_.Options("s", "node", false, &refusals_), true);
  // Valid under the cluster CA, with the secret, but it names
  // intruder.example, not the 127.0.0.1 its hello claims.
  auto intruder = Make(2, Loopback(test::PickFreePort()), certs_.Options("s", "intruder"), false);
  Connected connected;
  connected.req.data = &connected;
  struct raft_uv_transport* t = intruder->transport();
  ASSERT_EQ(t->connect(t, &connected.req, 1, listener_address.c_str(), &OnConnect), 0);
  ASSERT_TRUE(RunUntil([&] { return connected.done && listener->refused() == 1; }));
  EXPECT_EQ(connected.status, RAFT_NOCONNECTION);
  EXPECT_EQ(accepted_.count, 0);
  EXPECT_TRUE(Mentions(refusals_, "its certificate does not name 127.0.0.1"))
      << (refusals_.empty() ? "no refusal reported" : refusals_[0]);
  Close(*intruder);
  Close(*listener);
}

TEST_F(TlsTransportTest, AListenerNotNamedAsDialledIsRefused) {
  const std::string listener_address = Loopback(test::PickFreePort());
  auto listener = Make(1, listener_address, certs_.Options("s", "intruder"), true);
  auto connector = Make(2, Loopback(test::PickFreePort()),
                        certs_.Options("s", "node", false, &refusals_), false);
  Connected connected;
  connected.req.data = &connected;
  struct raft_uv_transport* t = connector->transport();
  ASSERT_EQ(t->connect(t, &connected.req, 1, listener_address.c_str(), &OnConnect), 0);
  ASSERT_TRUE(RunUntil([&] { return connected.done; }));
  EXPECT_EQ(connected.status, RAFT_NOCONNECTION);
  EXPECT_EQ(connector->refused(), 1u);
  EXPECT_TRUE(Mentions(refusals_, "control-plane TLS to " + listener_address + " refused"))
      << (refusals_.empty() ? "no refusal reported" : refusals_[0]);
  EXPECT_EQ(accepted_.count, 0);
  Close(*connector);
  Close(*listener);
}

TEST_F(TlsTransportTest, PlaintextPeersAreRefusedBothWays) {
  const std::string tls_address = Loopback(test::PickFreePort());
  const std::string plain_address = Loopback(test::PickFreePort());
  auto tls = Make(1, tls_address, certs_.Options("s", "node", false, &refusals_), true);
  auto plain = Make(2, plain_address, "s", true);

  Connected from_plain;
  from_plain.req.data = &from_plain;
  struct raft_uv_transport* p = plain->transport();
  ASSERT_EQ(p->connect(p, &from_plain.req, 1, tls_address.c_str(), &OnConnect), 0);
  ASSERT_TRUE(RunUntil([&] { return from_plain.done && tls->refused() >= 1; }));
  EXPECT_EQ(from_plain.status, RAFT_NOCONNECTION);

  Connected from_tls;
  from_tls.req.data = &from_tls;
  struct raft_uv_transport* t = tls->transport();
  ASSERT_EQ(t->connect(t, &from_tls.req, 2, plain_address.c_str(), &OnConnect), 0);
  ASSERT_TRUE(RunUntil([&] { return from_tls.done; }));
  EXPECT_EQ(from_tls.status, RAFT_NOCONNECTION);
  EXPECT_EQ(accepted_.count, 0);
  Close(*plain);
  Close(*tls);
}

TEST_F(TlsTransportTest, UnreadableFilesFailInit) {
  TransportOptions options = certs_.Options("s", "node");
  options.tls_key_file = "/nonexistent/node.key";
  AuthenticatedTransport transport(&loop_, std::move(options));
  struct raft_uv_transport* t = transport.transport();
  EXPECT_EQ(t->init(t, 1, Loopback(test::PickFreePort()).c_str()), RAFT_INVALID);
  EXPECT_NE(std::string(t->errmsg).find("peer TLS"), std::string::npos) << t->errmsg;
}

// A libraft server on the libuv backend with the authenticated transport.
struct Server {
  raft_id id = 0;
  std::string address;
  std::filesystem::path dir;
  std::unique_ptr<AuthenticatedTransport> transport;
  struct raft_io io {};
  ControlState state;
  RaftFsm fsm{&state};
  struct raft raft {};
  bool closed = false;
};

// Plaintext, and over mutual TLS.
class RaftOverTransportTest : public LoopTest, public ::testing::WithParamInterface<bool> {
 protected:
  void Start(Server& server, raft_id id, const std::string& secret) {
    server.id = id;
    server.address = Loopback(test::PickFreePort());
    std::string pattern = (std::filesystem::path(::testing::TempDir()) / "raft-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    server.dir = pattern;
    if (GetParam()) {
      ASSERT_TRUE(certs_.ok());
    }
    server.transport = std::make_unique<AuthenticatedTransport>(
        &loop_, GetParam() ? certs_.Options(secret, "node") : SecretOnly(secret));
    ASSERT_EQ(raft_uv_init(&server.io, &loop_, server.dir.c_str(), server.transport->transport()),
              0)
        << server.io.errmsg;
    ASSERT_EQ(raft_init(&server.raft, &server.io, server.fsm.fsm(), id, server.address.c_str()), 0)
        << raft_errmsg(&server.raft);
    raft_set_election_timeout(&server.raft, 300);
    raft_set_heartbeat_timeout(&server.raft, 50);
    server.raft.data = &server;
  }

  void Bootstrap(Server& server, const std::vector<Server*>& voters) {
    struct raft_configuration configuration;
    raft_configuration_init(&configuration);
    for (Server* voter : voters) {
      ASSERT_EQ(raft_configuration_add(&configuration, voter->id, voter->address.c_str(),
                                       RAFT_VOTER),
                0);
    }
    ASSERT_EQ(raft_bootstrap(&server.raft, &configuration), 0) << raft_errmsg(&server.raft);
    raft_configuration_close(&configuration);
    ASSERT_EQ(raft_start(&server.raft), 0) << raft_errmsg(&server.raft);
  }

  void Stop(Server& server) {
    raft_close(&server.raft, [](struct raft* r) { static_cast<Server*>(r->data)->closed = true; });
    ASSERT_TRUE(RunUntil([&] { return server.closed; }));
    raft_uv_close(&server.io);
    std::filesystem::remove_all(server.dir);
  }

  Server* Leader(std::initializer_list<Server*> servers) {
    for (Server* s : servers) {
      if (raft_state(&s->raft) == RAFT_LEADER) return s;
    }
    return nullptr;
  }

  Certificates certs_;
};

struct Applied {
  struct raft_apply req {};
  bool done = false;
  int status = -1;
  absl::StatusOr<uint64_t> result = absl::UnknownError("not applied");
};

TEST_P(RaftOverTransportTest, TwoServersElectAndReplicate) {
  Server a;
  Server b;
  Start(a, 1, "the secret");
  Start(b, 2, "the secret");
  Bootstrap(a, {&a, &b});
  Bootstrap(b, {&a, &b});

  ASSERT_TRUE(RunUntil([&] { return Leader({&a, &b}) != nullptr; }));
  Server* leader = Leader({&a, &b});

  Applied applied;
  applied.req.data = &applied;
  Member member;
  member.raft_id = 1;
  member.node_id = "n1";
  member.binary_address = a.address;
  ASSERT_EQ(ProposeCommand(&leader->raft, &applied.req, EncodeAddMember(member),
                           [](struct raft_apply* req, int status, void* result) {
                             auto* applied = static_cast<Applied*>(req->data);
                             applied->done = true;
                             applied->status = status;
                             if (status == 0) applied->result = RaftFsm::ResultOf(result);
                           }),
            0);
  ASSERT_TRUE(RunUntil([&] { return applied.done && a.state.epoch() == 1 && b.state.epoch() == 1; }));
  EXPECT_EQ(applied.status, 0);
  EXPECT_EQ(*applied.result, 1u);
  EXPECT_EQ(a.state.Snapshot(), b.state.Snapshot());
  // Both directions went through the handshake, and nothing was refused.
  EXPECT_GE(a.transport->accepted() + a.transport->connected(), 2u);
  EXPECT_GE(b.transport->accepted() + b.transport->connected(), 2u);
  EXPECT_EQ(a.transport->refused() + b.transport->refused(), 0u);

  EXPECT_EQ(a.transport->tls(), GetParam());

  Stop(a);
  Stop(b);
}

INSTANTIATE_TEST_SUITE_P(Transport, RaftOverTransportTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("MutualTls") : std::string("Plaintext");
                         });

}  // namespace
}  // namespace logkv::server::control
