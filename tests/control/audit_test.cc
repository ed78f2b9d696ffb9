// The audit chain (server/control/audit_chain.h), its part of the state
// machine (audit_state.h) and a node's file of it (audit_log.h).
#include <filesystem>
#include <functional>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "server/control/account_state.h"
#include "server/control/audit_chain.h"
#include "server/control/audit_log.h"
#include "server/control/audit_state.h"
#include "server/control/control_state.h"
#include "tests/engine/test_util.h"

namespace logkv::server::control {
namespace {

namespace fs = std::filesystem;
using audit::ChainPoint;
using audit::Entry;
using audit::Signer;
using audit::VerifyResult;

std::vector<Entry> MakeChain(const Signer& signer, int count) {
  std::vector<Entry> chain;
  std::string prev = audit::ZeroHash();
  for (int i = 1; i <= count; ++i) {
    Entry entry;
    entry.seq = static_cast<uint64_t>(i);
    entry.at_ms = 1000 * i;
    entry.kind = "SignUp";
    entry.detail = absl::StrCat("username=\"user", i, "\"");
    entry.value = static_cast<uint64_t>(i);
    entry.command_hash = audit::HashBytes(absl::StrCat("command ", i));
    signer.Seal(&entry, prev);
    prev = entry.hash;
    chain.push_back(entry);
  }
  return chain;
}

std::vector<std::string> Lines(const std::vector<Entry>& chain) {
  std::vector<std::string> lines;
  for (const Entry& entry : chain) lines.push_back(audit::EntryToJson(entry));
  return lines;
}

TEST(AuditChainTest, SealedEntriesVerifyAndRoundTripThroughJson) {
  const Signer signer = Signer::FromClusterSecret("s3cret");
  const std::vector<Entry> chain = MakeChain(signer, 5);
  for (const Entry& entry : chain) {
    absl::StatusOr<Entry> back = audit::EntryFromJson(audit::EntryToJson(entry));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, entry);
  }
  const ChainPoint head = signer.Head(5, chain.back().hash);
  VerifyResult result = audit::VerifyLines(Lines(chain), std::nullopt, head, signer.public_key());
  EXPECT_TRUE(result.ok) << result.problem;
  EXPECT_EQ(result.entries, 5u);
  EXPECT_EQ(result.last_seq, 5u);
  EXPECT_EQ(result.last_hash, chain.back().hash);
}

TEST(AuditChainTest, SignaturesAreDeterministicAndKeyedByTheSecret) {
  const Signer a = Signer::FromClusterSecret("s3cret");
  const Signer b = Signer::FromClusterSecret("s3cret");
  const Signer other = Signer::FromClusterSecret("other");
  EXPECT_EQ(a.public_key(), b.public_key());
  EXPECT_NE(a.public_key(), other.public_key());
  EXPECT_EQ(MakeChain(a, 3), MakeChain(b, 3));
  // A chain checked against another key fails at its first entry.
  VerifyResult result =
      audit::VerifyLines(Lines(MakeChain(a, 3)), std::nullopt, std::nullopt, other.public_key());
  EXPECT_FALSE(result.ok);
  EXPECT_EQ(result.bad_seq, 1u);
}

TEST(AuditChainTest, EveryChangedByteOfAnEntryIsFoundAtThatEntry) {
  const Signer signer = Signer::FromClusterSecret("s3cret");
  const std::vector<Entry> chain = MakeChain(signer, 4);
  const ChainPoint head = signer.Head(4, chain.back().hash);
  for (size_t target = 0; target < chain.size(); ++target) {
    const std::string line = audit::EntryToJson(chain[target]);
    for (size_t i = 0; i < line.size(); ++i) {
      std::vector<std::string> lines = Lines(chain);
      lines[target][i] = static_cast<char>(lines[target][i] ^ 0x01);
      VerifyResult result = audit::VerifyLines(lines, std::nullopt, head, signer.public_key());
      ASSERT_FALSE(result.ok) << "entry " << target + 1 << " byte " << i;
      EXPECT_EQ(result.bad_seq, target + 1) << "byte " << i << ": " << result.problem;
    }
  }
}

TEST(AuditChainTest, RemovedReorderedAndTruncatedEntriesAreNamed) {
  const Signer signer = Signer::FromClusterSecret("s3cret");
  const std::vector<Entry> chain = MakeChain(signer, 6);
  const ChainPoint head = signer.Head(6, chain.back().hash);
  const std::string key = signer.public_key();
  {
    std::vector<std::string> lines = Lines(chain);
    lines.erase(lines.begin() + 2);  // entry 3
    VerifyResult result = audit::VerifyLines(lines, std::nullopt, head, key);
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.bad_seq, 3u) << result.problem;
  }
  {
    std::vector<std::string> lines = Lines(chain);
    std::swap(lines[3], lines[4]);
    VerifyResult result = audit::VerifyLines(lines, std::nullopt, head, key);
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.bad_seq, 4u) << result.problem;
  }
  {
    std::vector<std::string> lines = Lines(chain);
    lines.resize(4);  // entries 5 and 6 cut
    VerifyResult result = audit::VerifyLines(lines, std::nullopt, head, key);
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.bad_seq, 5u) << result.problem;
    // Cut inside a line.
    lines = Lines(chain);
    lines[5].resize(lines[5].size() / 2);
    result = audit::VerifyLines(lines, std::nullopt, head, key);
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.bad_seq, 6u) << result.problem;
  }
  {
    // The front dropped without an anchor.
    std::vector<std::string> lines = Lines(chain);
    lines.erase(lines.begin(), lines.begin() + 2);
    VerifyResult result = audit::VerifyLines(lines, std::nullopt, head, key);
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.bad_seq, 1u) << result.problem;
    // With the signed anchor, it is retention.
    const ChainPoint anchor = signer.Anchor(2, chain[1].hash);
    result = audit::VerifyLines(lines, anchor, head, key);
    EXPECT_TRUE(result.ok) << result.problem;
    EXPECT_EQ(result.first_seq, 3u);
    // An anchor signed as a head (or an entry) is not an anchor.
    ChainPoint forged = anchor;
    forged.signature = signer.Head(2, chain[1].hash).signature;
    EXPECT_FALSE(audit::VerifyLines(lines, forged, head, key).ok);
    forged.signature = chain[1].signature;
    EXPECT_FALSE(audit::VerifyLines(lines, forged, head, key).ok);
  }
}

TEST(AuditChainTest, BoundedCutsOnCharacterBoundaries) {
  EXPECT_EQ(audit::Bounded("short", 10), "short");
  EXPECT_EQ(audit::Bounded("abcdefghij", 6), "abc...");
  const std::string cut = audit::Bounded("ab\xc3\xa9\xc3\xa9", 5);  // "abéé"
  EXPECT_EQ(cut, "ab...");
}

// ---- In the state machine ----------------------------------------------------

Member NewMember(uint64_t raft_id, const std::string& node_id) {
  Member member;
  member.raft_id = raft_id;
  member.node_id = node_id;
  member.binary_address = absl::StrCat("10.0.0.", raft_id, ":7070");
  member.http_address = absl::StrCat("10.0.0.", raft_id, ":8080");
  return member;
}

std::string EncodeRecordAuditForTest() {
  // Built through the public encoder.
  return EncodeRecordAudit({{1234, "data.put", "user 7", "key=\"a\""},
                            {1235, "data.delete", "", "key=\"b\""}});
}

std::vector<std::string> Script() {
  std::vector<std::string> script;
  script.push_back(EncodeAddMember(NewMember(1, "n1")));
  script.push_back(EncodeActivateMember("n1"));
  script.push_back(EncodeBarrier());                  // not recorded
  script.push_back(EncodeActivateMember("ghost"));    // refused: not recorded
  script.push_back(EncodeSetAuthMode(true));
  script.push_back(EncodeSetJwtSecret("0123456789abcdef0123456789abcdef", false));
  AccountUser user;
  user.email = "a@example.com";
  user.username = "alice";
  user.email_key = "a@example.com";
  user.username_key = "alice";
  user.password_hash = "$argon2id$x";
  user.created_at_ms = 5;
  script.push_back(EncodeSignUp(user));
  script.push_back(EncodeTouchApiKeys({{1, 10}}));  // not recorded
  script.push_back(EncodeRecordAuditForTest());
  script.push_back(EncodeSetReplicas(1));
  return script;
}

TEST(AuditStateTest, AcceptedCommandsBecomeEntriesInOrderAlikeOnEveryServer) {
  ControlState a;
  ControlState b;
  b.audit().SetSigner(Signer::FromClusterSecret(""));
  for (const std::string& command : Script()) {
    (void)a.Apply(command);
    (void)b.Apply(command);
  }
  const AuditChainState chain = a.audit().Current();
  EXPECT_EQ(chain, b.audit().Current());
  std::vector<std::string> kinds;
  for (const Entry& entry : chain.window) kinds.push_back(entry.kind);
  EXPECT_EQ(kinds, (std::vector<std::string>{"AddMember", "ActivateMember", "SetAuthMode",
                                             "SetJwtSecret", "SignUp", "data.put", "data.delete",
                                             "SetReplicas"}));
  EXPECT_EQ(chain.head_seq, 8u);
  // Never a secret.
  for (const Entry& entry : chain.window) {
    EXPECT_EQ(entry.detail.find("0123456789abcdef"), std::string::npos);
    EXPECT_EQ(entry.detail.find("argon2id"), std::string::npos);
  }
  EXPECT_EQ(chain.window[4].detail, "username=\"alice\"");
  EXPECT_EQ(chain.window[4].value, 1u);  // the user id assigned
  EXPECT_EQ(chain.window[5].actor, "user 7");
  EXPECT_EQ(chain.window[5].detail, "key=\"a\"");  // printable ASCII: as given
  EXPECT_EQ(chain.window[5].at_ms, 1234);
  std::vector<std::string> lines;
  for (const Entry& entry : chain.window) lines.push_back(audit::EntryToJson(entry));
  VerifyResult result =
      audit::VerifyLines(lines, std::nullopt, std::nullopt, a.audit().public_key());
  EXPECT_TRUE(result.ok) << result.problem;
}

// Every entry of a control change names who asked and through which node,
// as the command carried it; a user by id and by the username applied.
TEST(AuditStateTest, EntriesNameTheActorAndTheNodeTheCommandCarried) {
  ControlState state;
  ASSERT_TRUE(state.Apply(EncodeAddMember(NewMember(1, "n1"),
                                          CommandOptions::By(Actor::Node("n1"))))
                  .ok());
  ASSERT_TRUE(state.Apply(EncodeSetAuthMode(true, Actor::Node("n1"))).ok());
  AccountUser user;
  user.email = "a@example.com";
  user.username = "Zo\xc3\xab";  // "Zoë": escaped in the entry
  user.email_key = "a@example.com";
  user.username_key = "zo\xc3\xab";
  user.password_hash = "$argon2id$x";
  ASSERT_TRUE(state.Apply(EncodeSignUp(user, Actor::Anonymous("n2"))).ok());
  ASSERT_TRUE(state.Apply(EncodeCreateGroup("ops", 5, Actor::ClusterSecret("n2"))).ok());
  ASSERT_TRUE(state.Apply(EncodeSetGroupMember(1, 1, true, Actor::User(1, "n3"))).ok());
  ASSERT_TRUE(state.Apply(EncodeSetGroupMember(1, 1, false)).ok());  // no actor: an older node's
  // An event without an actor of its own takes the command's.
  ASSERT_TRUE(state.Apply(EncodeRecordAudit({{1, "backup.done", "", "name=\"b\""},
                                             {2, "backup.requested", "by=user user=1", ""}},
                                            CommandOptions::By(Actor::Node("n1"))))
                  .ok());
  std::vector<std::pair<std::string, std::string>> got;
  for (const Entry& entry : state.audit().Current().window) got.emplace_back(entry.kind, entry.actor);
  EXPECT_EQ(got, (std::vector<std::pair<std::string, std::string>>{
                     {"AddMember", "by=node node=\"n1\""},
                     {"SetAuthMode", "by=node node=\"n1\""},
                     {"SignUp", "by=anonymous node=\"n2\""},
                     {"NewGroup", "by=cluster_secret node=\"n2\""},
                     {"SetGroupMember", "by=user user=1 username=\"Zo\\xc3\\xab\" node=\"n3\""},
                     {"SetGroupMember", ""},
                     {"backup.done", "by=node node=\"n1\""},
                     {"backup.requested", "by=user user=1"},
                 }));
  // The access commands say what they changed.
  EXPECT_EQ(state.audit().Current().window[4].detail, "group_id=1 user_id=1 member=true");
  std::vector<std::string> lines;
  for (const Entry& entry : state.audit().Current().window) lines.push_back(audit::EntryToJson(entry));
  EXPECT_TRUE(audit::VerifyLines(lines, std::nullopt, std::nullopt, state.audit().public_key()).ok);
}

TEST(AuditStateTest, EventTextIsKeptAsciiSoItsJsonRoundTrips) {
  ControlState state;
  ASSERT_TRUE(state.Apply(EncodeRecordAudit({{1, "data.put", "", std::string("k\xff\n\0", 4)}}))
                  .ok());
  const Entry entry = state.audit().Current().window.back();
  EXPECT_EQ(entry.detail, "k\\xff\\n\\x00");
  absl::StatusOr<Entry> back = audit::EntryFromJson(audit::EntryToJson(entry));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, entry);
}

TEST(AuditStateTest, ARestoredSnapshotContinuesTheSameChain) {
  ControlState original;
  const std::vector<std::string> script = Script();
  const size_t half = script.size() / 2;
  for (size_t i = 0; i < half; ++i) (void)original.Apply(script[i]);
  ControlState restored;
  std::vector<AuditChainState> restores;
  restored.audit().SetListener(
      {.on_entries = nullptr,
       .on_restore = [&](const AuditChainState& chain) { restores.push_back(chain); }});
  ASSERT_TRUE(restored.Restore(original.Snapshot()).ok());
  ASSERT_EQ(restores.size(), 1u);
  EXPECT_EQ(restores[0], original.audit().Current());
  for (size_t i = half; i < script.size(); ++i) {
    (void)original.Apply(script[i]);
    (void)restored.Apply(script[i]);
  }
  EXPECT_EQ(restored.audit().Current(), original.audit().Current());
  EXPECT_EQ(restored.Snapshot(), original.Snapshot());
}

TEST(AuditStateTest, ASnapshotWithABrokenChainIsRefused) {
  ControlState state;
  for (const std::string& command : Script()) (void)state.Apply(command);
  std::string snapshot = state.Snapshot();
  // Change one byte of the username recorded in an entry.
  const size_t at = snapshot.find("username=\"alice\"");
  ASSERT_NE(at, std::string::npos);
  snapshot[at + 10] = 'A';
  ControlState target;
  absl::Status status = target.Restore(snapshot);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("audit"), std::string::npos) << status;
}

TEST(AuditStateTest, TheWindowIsBounded) {
  ControlState state;
  for (size_t i = 0; i < kAuditWindow + 10; ++i) {
    ASSERT_TRUE(state.Apply(EncodeRecordAudit({{1, "x", "", ""}})).ok());
  }
  const AuditChainState chain = state.audit().Current();
  EXPECT_EQ(chain.head_seq, kAuditWindow + 10);
  EXPECT_EQ(chain.window.size(), kAuditWindow);
  EXPECT_EQ(chain.window.front().seq, 11u);
  ControlState copy;
  ASSERT_TRUE(copy.Restore(state.Snapshot()).ok());
  EXPECT_EQ(copy.audit().Current(), chain);
}

// ---- A node's file -------------------------------------------------------------

class AuditLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() /
            absl::StrCat("audit_log_test_", ::getpid(), "_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A state machine writing into a log at dir_.
  std::unique_ptr<AuditLog> OpenLog(
      ControlState* state, size_t retention = 0,
      std::function<void(const std::string&, size_t)> on_problem = nullptr) {
    auto log = std::make_unique<AuditLog>(
        AuditLogOptions{.dir = dir_,
                        .retention_entries = retention,
                        .retention_age = absl::ZeroDuration(),
                        .on_problem = std::move(on_problem)},
        signer_);
    EXPECT_TRUE(log->Open().ok());
    state->audit().SetSigner(signer_);
    AuditLog* raw = log.get();
    state->audit().SetListener(
        {.on_entries = [raw](const std::vector<Entry>& entries) { raw->Append(entries); },
         .on_restore = [raw](const AuditChainState& chain) { raw->Restore(chain); }});
    return log;
  }

  VerifyResult Verify() {
    absl::StatusOr<VerifyResult> result = audit::VerifyDirectory(dir_, signer_.public_key());
    EXPECT_TRUE(result.ok()) << result.status();
    if (result.ok()) return *result;
    VerifyResult failed;
    failed.ok = false;
    return failed;
  }

  std::string LogPath() const { return dir_ + "/" + audit::kLogFileName; }
  std::string ReadLog() const {
    std::ifstream in(LogPath(), std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  void WriteLog(const std::string& text) const {
    std::ofstream out(LogPath(), std::ios::binary | std::ios::trunc);
    out << text;
  }

  std::string dir_;
  Signer signer_ = Signer::FromClusterSecret("file secret");
};

// The i-th command of a log, encoded once (a command carries its
// proposer's clock): a restart replays the same bytes.
const std::string& Command(int i) {
  static auto* commands = new std::vector<std::string>();
  while (static_cast<int>(commands->size()) <= i) {
    const int n = static_cast<int>(commands->size());
    commands->push_back(
        EncodeRecordAudit({{n, "backup", "node-1", absl::StrCat("backup ", n)}}));
  }
  return (*commands)[i];
}

void Record(ControlState& state, int count, int from = 0) {
  for (int i = from; i < from + count; ++i) ASSERT_TRUE(state.Apply(Command(i)).ok());
}

TEST_F(AuditLogTest, ALogThatRestartsAndReplaysVerifies) {
  ControlState state;
  {
    std::unique_ptr<AuditLog> log = OpenLog(&state);
    Record(state, 10);
    log->Flush();
    EXPECT_EQ(log->last_seq(), 10u);
  }
  // A restart replays the whole log into a new state machine: nothing is
  // written twice, and new entries follow.
  ControlState again;
  std::unique_ptr<AuditLog> log = OpenLog(&again);
  Record(again, 12);
  log->Flush();
  EXPECT_EQ(log->last_seq(), 12u);
  VerifyResult result = Verify();
  EXPECT_TRUE(result.ok) << result.problem;
  EXPECT_EQ(result.entries, 12u);
  absl::StatusOr<AuditLog::Page> page = log->Read(10, 100);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->entries.size(), 2u);
  EXPECT_EQ(audit::EntryFromJson(page->entries[0])->seq, 11u);
  EXPECT_EQ(page->head->seq, 12u);
}

TEST_F(AuditLogTest, RetentionAnchorsTheChain) {
  ControlState state;
  std::unique_ptr<AuditLog> log = OpenLog(&state, /*retention=*/10);
  Record(state, 200);
  log->Flush();
  VerifyResult result = Verify();
  EXPECT_TRUE(result.ok) << result.problem;
  EXPECT_GT(result.first_seq, 1u);
  EXPECT_LE(result.entries, 10u + 64u);
  EXPECT_EQ(result.last_seq, 200u);
  absl::StatusOr<AuditLog::Page> page = log->Read(0, 1000);
  ASSERT_TRUE(page.ok());
  ASSERT_TRUE(page->anchor.has_value());
  EXPECT_EQ(page->anchor->seq + 1, result.first_seq);
  // Dropping one more entry from the front is not retention.
  std::vector<std::string> lines = absl::StrSplit(ReadLog(), '\n', absl::SkipEmpty());
  lines.erase(lines.begin());
  WriteLog(absl::StrCat(absl::StrJoin(lines, "\n"), "\n"));
  result = Verify();
  EXPECT_FALSE(result.ok);
  EXPECT_EQ(result.bad_seq, page->anchor->seq + 1) << result.problem;
}

TEST_F(AuditLogTest, ASnapshotPastTheFileAnchorsBeforeItsEntries) {
  ControlState leader;
  leader.audit().SetSigner(signer_);
  Record(leader, 5000);  // past the window: the first 904 are not in snapshots
  ControlState follower;
  std::unique_ptr<AuditLog> log = OpenLog(&follower);
  ASSERT_TRUE(follower.Restore(leader.Snapshot()).ok());
  for (int i = 5000; i < 5003; ++i) ASSERT_TRUE(follower.Apply(Command(i)).ok());
  log->Flush();
  VerifyResult result = Verify();
  EXPECT_TRUE(result.ok) << result.problem;
  EXPECT_EQ(result.first_seq, 5000 - kAuditWindow + 1);
  EXPECT_EQ(result.last_seq, 5003u);
}

// A full disk: the entries a write could not take wait in memory, the file
// keeps no part of them, and the first write once there is room writes them
// all, in order. Needs the right to mount a tmpfs (skipped elsewhere).
TEST_F(AuditLogTest, AFullDiskLosesNoEntryAndLeavesNoTornLine) {
  test::ScopedTmpfs tmpfs(dir_, "64k");
  if (!tmpfs.mounted()) GTEST_SKIP() << "no tmpfs: " << tmpfs.error();
  absl::Mutex mu;
  std::vector<std::pair<std::string, size_t>> problems;
  ControlState state;
  std::unique_ptr<AuditLog> log =
      OpenLog(&state, 0, [&mu, &problems](const std::string& why, size_t waiting) {
        absl::MutexLock lock(&mu);
        problems.emplace_back(why, waiting);
      });
  // Some lines written first: however the writer batches what follows (all
  // of it in one write on a busy machine), the file keeps these.
  Record(state, 10);
  log->Flush();
  ASSERT_TRUE(log->healthy());
  ASSERT_EQ(log->last_seq(), 10u);
  Record(state, 990, 10);  // some 300 KB of lines
  log->Flush();
  EXPECT_FALSE(log->healthy());
  EXPECT_GE(log->last_seq(), 10u);
  EXPECT_LT(log->last_seq(), 1000u);
  {
    absl::MutexLock lock(&mu);
    ASSERT_EQ(problems.size(), 1u);  // said once, not at every attempt
    EXPECT_FALSE(problems[0].first.empty());
  }
  const std::string partial = ReadLog();
  ASSERT_FALSE(partial.empty());
  EXPECT_EQ(partial.back(), '\n');
  VerifyResult result = Verify();
  EXPECT_TRUE(result.ok) << result.problem;

  ASSERT_TRUE(tmpfs.Resize("16m").ok());
  Record(state, 1, 1000);
  log->Flush();
  EXPECT_TRUE(log->healthy());
  EXPECT_EQ(log->last_seq(), 1001u);
  {
    absl::MutexLock lock(&mu);
    ASSERT_EQ(problems.size(), 2u);
    EXPECT_TRUE(problems[1].first.empty());  // written again
  }
  result = Verify();
  EXPECT_TRUE(result.ok) << result.problem;
  EXPECT_EQ(result.entries, 1001u);
  EXPECT_EQ(result.last_seq, 1001u);
}

// A last line cut short (a crash in a write) is cut off at the start: the
// replay hands its entry over again, and the file verifies.
TEST_F(AuditLogTest, ATornLastLineIsCutAtTheStart) {
  ControlState state;
  {
    std::unique_ptr<AuditLog> log = OpenLog(&state);
    Record(state, 5);
  }
  // The start of a sixth line, the write cut before its sync (and so
  // before the head's rewrite).
  WriteLog(absl::StrCat(ReadLog(), "{\"seq\":6,\"at_ms\":60"));
  ControlState again;
  std::unique_ptr<AuditLog> log = OpenLog(&again);
  Record(again, 8);
  log->Flush();
  VerifyResult result = Verify();
  EXPECT_TRUE(result.ok) << result.problem;
  EXPECT_EQ(result.entries, 8u);
}

// A log cut while the node was down is not healed by the restart: new
// entries follow the head, and the check names the first missing one.
TEST_F(AuditLogTest, ALogCutWhileDownStaysCut) {
  ControlState state;
  {
    std::unique_ptr<AuditLog> log = OpenLog(&state);
    Record(state, 6);
  }
  std::vector<std::string> lines = absl::StrSplit(ReadLog(), '\n', absl::SkipEmpty());
  lines.resize(4);
  WriteLog(absl::StrCat(absl::StrJoin(lines, "\n"), "\n"));
  ControlState again;
  std::unique_ptr<AuditLog> log = OpenLog(&again);
  Record(again, 8);
  log->Flush();
  VerifyResult result = Verify();
  EXPECT_FALSE(result.ok);
  EXPECT_EQ(result.bad_seq, 5u) << result.problem;
}

TEST_F(AuditLogTest, OfflineEditsAreFoundAtTheRightEntry) {
  ControlState state;
  std::unique_ptr<AuditLog> log = OpenLog(&state);
  Record(state, 8);
  log.reset();
  const std::string good = ReadLog();
  ASSERT_TRUE(Verify().ok);
  std::vector<std::string> lines = absl::StrSplit(good, '\n', absl::SkipEmpty());
  // A byte of entry 5's detail.
  {
    std::string text = good;
    const size_t at = text.find("backup 4");  // entry 5 records backup 4
    ASSERT_NE(at, std::string::npos);
    text[at + 7] = '9';
    WriteLog(text);
    VerifyResult result = Verify();
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.bad_seq, 5u) << result.problem;
  }
  // Entry 3 removed.
  {
    std::vector<std::string> kept = lines;
    kept.erase(kept.begin() + 2);
    WriteLog(absl::StrCat(absl::StrJoin(kept, "\n"), "\n"));
    VerifyResult result = Verify();
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.bad_seq, 3u) << result.problem;
  }
  // Truncated after entry 6, and in the middle of entry 7.
  {
    std::vector<std::string> kept(lines.begin(), lines.begin() + 6);
    WriteLog(absl::StrCat(absl::StrJoin(kept, "\n"), "\n"));
    VerifyResult result = Verify();
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.bad_seq, 7u) << result.problem;
    WriteLog(good.substr(0, good.find(lines[6]) + lines[6].size() / 2));
    result = Verify();
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.bad_seq, 7u) << result.problem;
  }
  WriteLog(good);
  EXPECT_TRUE(Verify().ok);
}

}  // namespace
}  // namespace logkv::server::control
