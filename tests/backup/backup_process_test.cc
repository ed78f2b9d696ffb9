// Backups of a running logkvd, as an operator takes them: a backup under a
// write load restored into an empty directory and served by a new logkvd
// answers exactly the writes before its cut (values, versions, TTLs); a
// logkvd killed (SIGKILL) in the middle of a backup leaves nothing that
// looks complete, and cleans up at its next start; the backup routes with
// auth on refuse callers without the administrator's credentials.
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "protocol/logkv_generated.h"
#include "server/backup/backup.h"
#include "tests/engine/test_util.h"
#include "tests/rest/http_client.h"
#include "tests/server/logkvd_process.h"

namespace logkv::test {
namespace {

namespace fs = std::filesystem;
namespace p = ::logkv::protocol;

std::unique_ptr<LogkvdProcess> StartLogkvd(const std::string& data_dir,
                                           std::vector<std::string> extra) {
  std::vector<std::string> args = {"--data_dir=" + data_dir, "--threads=2", "--shards=4",
                                   "--segment_bytes=262144", "--log_level=info"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto server = std::make_unique<LogkvdProcess>(LOGKVD_PATH, args);
  absl::Status status = server->Start();
  EXPECT_TRUE(status.ok()) << status << server->Output();
  return server;
}

// GET /api/backup/status until pred holds (bounded).
nlohmann::json WaitStatus(int http_port, const HttpHeaders& headers,
                          const std::function<bool(const nlohmann::json&)>& pred,
                          absl::Duration timeout = absl::Seconds(60)) {
  const absl::Time deadline = absl::Now() + timeout;
  nlohmann::json status;
  while (absl::Now() < deadline) {
    absl::StatusOr<HttpAnswer> answer = Fetch(http_port, "GET", "/api/backup/status", headers);
    if (answer.ok() && answer->status == 200) {
      status = answer->Json();
      if (pred(status)) return status;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  ADD_FAILURE() << "timed out waiting on /api/backup/status: " << status.dump();
  return status;
}

struct Written {
  uint32_t shard;
  uint64_t sequence;
  std::string key;
  bool put;
  std::string value;
  uint64_t version;
  uint64_t timestamp;
  int64_t ttl_ms;
};

// Pipelines puts (some with a TTL) and deletes in rounds until stop, and
// keeps every acknowledged write with where the node put it.
void WriteLoad(int port, std::atomic<bool>* stop, std::vector<Written>* out, uint64_t seed) {
  absl::StatusOr<RawConnection> connected = RawConnection::Connect(port);
  ASSERT_TRUE(connected.ok()) << connected.status();
  RawConnection& c = *connected;
  Random random(seed);
  uint64_t id = 0;
  while (!stop->load()) {
    std::map<uint64_t, Written> pending;
    std::string frames;
    for (int i = 0; i < 50; ++i) {
      Written w{};
      w.key = absl::StrCat("key-", random.Uniform(300));
      w.put = !random.Percent(10);
      ++id;
      if (w.put) {
        w.value = random.Bytes(50 + random.Uniform(500));
        w.ttl_ms = random.Percent(30) ? 3'600'000 : 0;
        frames += PutFrame(id, w.key, w.value, w.ttl_ms);
      } else {
        frames += DeleteFrame(id, w.key);
      }
      pending[id] = std::move(w);
    }
    ASSERT_TRUE(c.SendBytes(frames).ok());
    for (size_t i = 0; i < pending.size(); ++i) {
      absl::StatusOr<std::string> frame = c.ReadFrame();
      ASSERT_TRUE(frame.ok()) << frame.status();
      const p::Response* r = AsResponse(*frame);
      ASSERT_NE(r, nullptr);
      if (r->status() != p::StatusCode::Ok) continue;  // a delete of an absent key
      const p::WriteResult* result = r->result_as_WriteResult();
      ASSERT_NE(result, nullptr);
      Written& w = pending.at(r->request_id());
      w.shard = result->shard();
      w.sequence = result->sequence();
      w.version = result->version();
      w.timestamp = result->timestamp();
      out->push_back(w);
    }
  }
}

TEST(BackupProcessTest, BackupUnderLoadRestoresIntoAnEmptyDirectoryAndServes) {
  ScopedTempDir dir;
  const std::string backups = dir.Subdir("backups");
  auto server = StartLogkvd(dir.Subdir("data"), {"--backup_dir=" + backups,
                                                 "--backup_rate_limit=8388608"});
  ASSERT_TRUE(server->running());
  // Data before the backup: sealed segments to copy.
  std::vector<Written> written;
  std::atomic<bool> stop{false};
  {
    std::atomic<bool> stop_soon{false};
    std::thread first([&] { WriteLoad(server->port(), &stop_soon, &written, TestSeed()); });
    absl::SleepFor(absl::Milliseconds(300));
    stop_soon.store(true);
    first.join();
  }
  std::vector<Written> during;
  std::thread writer([&] { WriteLoad(server->port(), &stop, &during, TestSeed() + 1); });
  absl::StatusOr<HttpAnswer> started = Fetch(server->http_port(), "POST", "/api/backup");
  ASSERT_TRUE(started.ok()) << started.status();
  ASSERT_EQ(started->status, 202) << started->body;
  const std::string name = started->Json().value("name", "");
  nlohmann::json status = WaitStatus(server->http_port(), {}, [](const nlohmann::json& s) {
    return !s.value("running", true) && (s["last_success"].is_object() || s.value("failures", 0) > 0);
  });
  absl::SleepFor(absl::Milliseconds(100));  // writes after the cut too
  stop.store(true);
  writer.join();
  ASSERT_TRUE(status["last_success"].is_object()) << status.dump();
  EXPECT_EQ(status["last_success"]["name"], name);
  EXPECT_GT(status["last_success"]["bytes"].get<uint64_t>(), 0u);
  EXPECT_GE(status["last_success"]["duration_ms"].get<int64_t>(), 0);
  written.insert(written.end(), during.begin(), during.end());
  EXPECT_EQ(server->Stop(), 0);

  const std::string path = status["last_success"]["path"].get<std::string>();
  const std::string& absolute = path;  // --backup_dir was absolute
  absl::StatusOr<server::backup::BackupManifest> verified = server::backup::VerifyBackup(absolute);
  ASSERT_TRUE(verified.ok()) << verified.status();
  const std::string restored = dir.Subdir("restored");
  ASSERT_TRUE(server::backup::RestoreBackup(absolute, restored).ok());
  const std::vector<uint64_t>& cut = verified->shard_sequences;

  // The model: every acknowledged write at or before its shard's cut.
  struct Expected {
    bool present = false;
    std::string value;
    uint64_t version = 0;
    int64_t expiry_at_least = 0;
    int64_t expiry_at_most = 0;
  };
  std::sort(written.begin(), written.end(), [](const Written& a, const Written& b) {
    return a.shard != b.shard ? a.shard < b.shard : a.sequence < b.sequence;
  });
  std::map<std::string, Expected> model;
  size_t after_cut = 0;
  for (const Written& w : written) {
    ASSERT_LT(w.shard, cut.size());
    if (w.sequence > cut[w.shard]) {
      ++after_cut;
      continue;
    }
    Expected& e = model[w.key];
    if (!w.put) {
      e = Expected{};
      continue;
    }
    e.present = true;
    e.value = w.value;
    e.version = w.version;
    // The expiry is stamped from the node's clock as the write's timestamp
    // is, within the same instant give or take the clock's step.
    const int64_t at = engine::TimestampUnixMs(w.timestamp);
    e.expiry_at_least = w.ttl_ms == 0 ? 0 : at + w.ttl_ms - 1000;
    e.expiry_at_most = w.ttl_ms == 0 ? 0 : at + w.ttl_ms + 1000;
  }
  EXPECT_GT(after_cut, 0u) << "no write came after the cut: the load did not overlap";

  // A new logkvd on the restored directory serves exactly the model.
  auto copy = StartLogkvd(restored, {});
  ASSERT_TRUE(copy->running());
  absl::StatusOr<RawConnection> connected = RawConnection::Connect(copy->port());
  ASSERT_TRUE(connected.ok());
  uint64_t id = 0;
  for (const auto& [key, expected] : model) {
    SCOPED_TRACE(key);
    ASSERT_TRUE(connected->SendBytes(GetFrame(++id, key)).ok());
    absl::StatusOr<std::string> frame = connected->ReadFrame();
    ASSERT_TRUE(frame.ok());
    const p::Response* r = AsResponse(*frame);
    ASSERT_NE(r, nullptr);
    if (!expected.present) {
      EXPECT_EQ(r->status(), p::StatusCode::NotFound);
      continue;
    }
    ASSERT_EQ(r->status(), p::StatusCode::Ok);
    const p::ValueResult* value = r->result_as_ValueResult();
    ASSERT_NE(value, nullptr);
    EXPECT_EQ(std::string(p::View(value->value())), expected.value);
    EXPECT_EQ(value->version(), expected.version);
    EXPECT_GE(value->expiry_unix_ms(), expected.expiry_at_least);
    EXPECT_LE(value->expiry_unix_ms(), expected.expiry_at_most);
  }
  EXPECT_EQ(copy->Stop(), 0);
}

TEST(BackupProcessTest, KilledMidBackupLeavesNothingThatLooksComplete) {
  ScopedTempDir dir;
  const std::string data = dir.Subdir("data");
  const std::string backups = dir.Subdir("backups");
  for (const char* format : {"archive", "directory"}) {
    SCOPED_TRACE(format);
    // Slow enough that the kill always lands in the middle.
    auto server = StartLogkvd(data, {"--backup_dir=" + backups, "--backup_rate_limit=65536",
                                     absl::StrCat("--backup_format=", format)});
    ASSERT_TRUE(server->running());
    {
      absl::StatusOr<RawConnection> c = RawConnection::Connect(server->port());
      ASSERT_TRUE(c.ok());
      std::string frames;
      for (int i = 0; i < 2000; ++i) {
        frames += PutFrame(i + 1, absl::StrCat("k", i), std::string(500, 'v'));
      }
      ASSERT_TRUE(c->SendBytes(frames).ok());
      for (int i = 0; i < 2000; ++i) ASSERT_TRUE(c->ReadFrame().ok());
    }
    absl::StatusOr<HttpAnswer> started = Fetch(server->http_port(), "POST", "/api/backup");
    ASSERT_TRUE(started.ok());
    ASSERT_EQ(started->status, 202) << started->body;
    // A second request while it runs is refused.
    absl::StatusOr<HttpAnswer> again = Fetch(server->http_port(), "POST", "/api/backup");
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->status, 409) << again->body;
    WaitStatus(server->http_port(), {}, [](const nlohmann::json& s) {
      return s["current"].is_object() && s["current"].value("bytes_done", 0) > 0;
    });
    server->Kill();

    absl::StatusOr<std::vector<server::backup::ListedBackup>> listed =
        server::backup::ListBackups(backups);
    ASSERT_TRUE(listed.ok()) << listed.status();
    ASSERT_FALSE(listed->empty());
    for (const server::backup::ListedBackup& backup : *listed) {
      EXPECT_FALSE(backup.complete) << backup.path;
      EXPECT_FALSE(server::backup::VerifyBackup(backup.path).ok()) << backup.path;
      EXPECT_FALSE(server::backup::RestoreBackup(backup.path, dir.Subdir("nowhere")).ok());
    }

    // The next start removes the leftovers; a backup then completes.
    auto restarted = StartLogkvd(data, {"--backup_dir=" + backups, "--backup_rate_limit=0",
                                        absl::StrCat("--backup_format=", format)});
    ASSERT_TRUE(restarted->running());
    EXPECT_NE(restarted->Output().find("a backup cut short"), std::string::npos);
    listed = server::backup::ListBackups(backups);
    ASSERT_TRUE(listed.ok());
    EXPECT_TRUE(listed->empty());
    started = Fetch(restarted->http_port(), "POST", "/api/backup");
    ASSERT_TRUE(started.ok());
    ASSERT_EQ(started->status, 202) << started->body;
    nlohmann::json status = WaitStatus(restarted->http_port(), {}, [](const nlohmann::json& s) {
      return s["last_success"].is_object();
    });
    ASSERT_TRUE(server::backup::VerifyBackup(status["last_success"]["path"]).ok());
    EXPECT_EQ(restarted->Stop(), 0);
    fs::remove_all(backups);
  }
}

TEST(BackupProcessTest, RoutesNeedTheAdministratorWithAuthOn) {
  ScopedTempDir dir;
  auto server = StartLogkvd(dir.Subdir("data"), {"--auth=on", "--cluster_secret=s3cret",
                                                 "--backup_dir=" + dir.Subdir("backups")});
  ASSERT_TRUE(server->running());
  for (const char* method : {"POST", "GET"}) {
    const char* target = std::string(method) == "POST" ? "/api/backup" : "/api/backup/status";
    SCOPED_TRACE(target);
    absl::StatusOr<HttpAnswer> none = Fetch(server->http_port(), method, target);
    ASSERT_TRUE(none.ok());
    EXPECT_EQ(none->status, 401) << none->body;
    absl::StatusOr<HttpAnswer> wrong =
        Fetch(server->http_port(), method, target, {{"X-Cluster-Secret", "guess"}});
    ASSERT_TRUE(wrong.ok());
    EXPECT_EQ(wrong->status, 403) << wrong->body;
    absl::StatusOr<HttpAnswer> bad_key =
        Fetch(server->http_port(), method, target, {{"X-API-Key", "not-a-key"}});
    ASSERT_TRUE(bad_key.ok());
    EXPECT_EQ(bad_key->status, 401) << bad_key->body;
  }
  const HttpHeaders admin = {{"X-Cluster-Secret", "s3cret"}};
  absl::StatusOr<HttpAnswer> started =
      Fetch(server->http_port(), "POST", "/api/backup", admin);
  ASSERT_TRUE(started.ok());
  EXPECT_EQ(started->status, 202) << started->body;
  nlohmann::json status = WaitStatus(server->http_port(), admin, [](const nlohmann::json& s) {
    return s["last_success"].is_object();
  });
  EXPECT_EQ(status.value("successes", 0), 1);
  // And in the Prometheus output (the operator's credential with auth on).
  absl::StatusOr<HttpAnswer> metrics = Fetch(server->http_port(), "GET",
                                             "/metrics?format=prometheus",
                                             {{"Authorization", "Bearer s3cret"}});
  ASSERT_TRUE(metrics.ok());
  ASSERT_EQ(metrics->status, 200) << metrics->body;
  EXPECT_NE(metrics->body.find("logkv_backup_successes_total 1"), std::string::npos);
  EXPECT_NE(metrics->body.find("logkv_backup_failures_total 0"), std::string::npos);
  EXPECT_NE(metrics->body.find("logkv_backup_last_success_timestamp_seconds "), std::string::npos);
  EXPECT_NE(metrics->body.find("logkv_backup_running 0"), std::string::npos);
  EXPECT_EQ(server->Stop(), 0);
}

TEST(BackupProcessTest, WithoutABackupDirectoryRequestsAreRefused) {
  ScopedTempDir dir;
  auto server = StartLogkvd(dir.Subdir("data"), {});
  ASSERT_TRUE(server->running());
  absl::StatusOr<HttpAnswer> started = Fetch(server->http_port(), "POST", "/api/backup");
  ASSERT_TRUE(started.ok());
  EXPECT_EQ(started->status, 503) << started->body;
  absl::StatusOr<HttpAnswer> status = Fetch(server->http_port(), "GET", "/api/backup/status");
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->status, 200);
  EXPECT_FALSE(status->Json().value("enabled", true));
  EXPECT_EQ(server->Stop(), 0);
}

// Runs the logkv CLI; its exit code and standard output.
std::pair<int, std::string> RunCli(const std::string& arguments) {
  const std::string command = absl::StrCat(LOGKV_CLI_PATH, " ", arguments, " 2>&1");
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return {-1, ""};
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST(BackupProcessTest, CliCreatesListsVerifiesAndRestores) {
  ScopedTempDir dir;
  const std::string backups = dir.Subdir("backups");
  auto server = StartLogkvd(dir.Subdir("data"), {"--backup_dir=" + backups,
                                                 "--cluster_secret=s3cret",
                                                 "--backup_format=directory"});
  ASSERT_TRUE(server->running());
  {
    absl::StatusOr<RawConnection> c = RawConnection::Connect(server->port());
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE(c->SendBytes(PutFrame(1, "hello", "world")).ok());
    ASSERT_TRUE(c->ReadFrame().ok());
  }
  const std::string target = absl::StrCat("--http_target=127.0.0.1:", server->http_port());
  auto [denied, denied_out] = RunCli(absl::StrCat(target, " backup create"));
  EXPECT_EQ(denied, 2) << denied_out;
  EXPECT_NE(denied_out.find("401"), std::string::npos) << denied_out;
  auto [created, created_out] =
      RunCli(absl::StrCat(target, " --cluster_secret=s3cret backup create --json"));
  ASSERT_EQ(created, 0) << created_out;
  const std::string path = nlohmann::json::parse(created_out).value("path", "");
  ASSERT_FALSE(path.empty()) << created_out;
  auto [listed, listed_out] = RunCli(absl::StrCat("backup list ", backups));
  EXPECT_EQ(listed, 0) << listed_out;
  EXPECT_NE(listed_out.find("complete"), std::string::npos) << listed_out;
  auto [verified, verified_out] = RunCli(absl::StrCat("backup verify ", path));
  EXPECT_EQ(verified, 0) << verified_out;
  const std::string restored = dir.Subdir("restored");
  auto [done, done_out] = RunCli(absl::StrCat("backup restore ", path, " ", restored));
  EXPECT_EQ(done, 0) << done_out;
  auto [again, again_out] = RunCli(absl::StrCat("backup restore ", path, " ", restored));
  EXPECT_EQ(again, 2) << again_out;
  EXPECT_NE(again_out.find("not empty"), std::string::npos) << again_out;
  // A flipped byte in a segment: verify fails and names the file.
  std::string segment;
  for (const auto& entry : fs::recursive_directory_iterator(path)) {
    if (entry.path().extension() == ".log" && entry.file_size() > 100) segment = entry.path();
  }
  ASSERT_FALSE(segment.empty());
  std::string bytes = ReadFileBytes(segment);
  bytes[bytes.size() - 10] ^= 1;
  WriteFileBytes(segment, bytes);
  auto [damaged, damaged_out] = RunCli(absl::StrCat("backup verify ", path));
  EXPECT_EQ(damaged, 2) << damaged_out;
  EXPECT_NE(damaged_out.find("checksum"), std::string::npos) << damaged_out;
  EXPECT_EQ(server->Stop(), 0);

  auto copy = StartLogkvd(restored, {});
  ASSERT_TRUE(copy->running());
  absl::StatusOr<RawConnection> c = RawConnection::Connect(copy->port());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->SendBytes(GetFrame(1, "hello")).ok());
  absl::StatusOr<std::string> frame = c->ReadFrame();
  ASSERT_TRUE(frame.ok());
  const p::Response* r = AsResponse(*frame);
  ASSERT_NE(r, nullptr);
  ASSERT_EQ(r->status(), p::StatusCode::Ok);
  EXPECT_EQ(std::string(p::View(r->result_as_ValueResult()->value())), "world");
  EXPECT_EQ(copy->Stop(), 0);
}

TEST(BackupProcessTest, BadScheduleIsRefusedAtStart) {
  ScopedTempDir dir;
  LogkvdProcess server(LOGKVD_PATH, {"--data_dir=" + dir.Subdir("data"),
                                     "--backup_dir=" + dir.Subdir("b"),
                                     "--backup_schedule=0 3 * *"});
  EXPECT_FALSE(server.Start(absl::Seconds(20)).ok());
  EXPECT_NE(server.Output().find("--backup_schedule"), std::string::npos) << server.Output();
}

}  // namespace
}  // namespace logkv::test
