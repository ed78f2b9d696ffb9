// The audit log in real logkvd processes (docs/security.md, "Audit log"):
// GET /api/audit and its credentials, audited data writes (--audit-prefix),
// `logkv audit verify` passing on a real log and naming the first bad entry
// after offline edits of a stopped node's data directory, and every node of
// three holding the same chain head. Waits are bounded; nothing is timed.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cluster/cluster_process.h"
#include "tests/engine/test_util.h"

namespace logkv::test {
namespace {

namespace fs = std::filesystem;

constexpr char kSecret[] = "cluster-test-secret";

absl::StatusOr<HttpAnswer> GetAudit(int port, bool with_secret, uint64_t since = 0) {
  HttpHeaders headers;
  if (with_secret) headers.emplace_back("X-Cluster-Secret", kSecret);
  return HttpExchange(port, "GET", absl::StrCat("/api/audit?since=", since), headers, "",
                      absl::Seconds(5));
}

// Polls (bounded) until the node's log holds an entry satisfying pred.
nlohmann::json WaitForEntry(int port, const std::function<bool(const nlohmann::json&)>& pred) {
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    absl::StatusOr<HttpAnswer> answer = GetAudit(port, true);
    if (answer.ok() && answer->status == 200) {
      nlohmann::json page = nlohmann::json::parse(answer->body, nullptr, false);
      if (page.is_object()) {
        for (const nlohmann::json& entry : page["entries"]) {
          if (pred(entry)) return page;
        }
      }
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return nullptr;
}

struct CliResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

CliResult RunCli(const std::vector<std::string>& args) {
  const std::string out_path =
      (fs::temp_directory_path() / absl::StrCat("audit_cli_", ::getpid(), ".out")).string();
  std::string command = LOGKV_CLI_PATH;
  for (const std::string& arg : args) absl::StrAppend(&command, " '", arg, "'");
  absl::StrAppend(&command, " >", out_path, " 2>&1");
  const int status = std::system(command.c_str());
  CliResult result;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(out_path);
  std::stringstream text;
  text << in.rdbuf();
  result.output = text.str();
  fs::remove(out_path);
  return result;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

ClusterOptions Options(int nodes) {
  ClusterOptions options;
  options.logkvd_binary = LOGKVD_PATH;
  options.nodes = nodes;
  options.replicas = nodes;
  options.extra_flags = {"--audit-prefix=audited/"};
  return options;
}

// The online check reads the log in pages its client takes whatever the
// log's length: pages of 10,000 entries passed the CLI's limit on an answer
// (1 MiB) from about 1,850 entries on, and the check failed.
TEST(AuditClusterTest, ALongLogVerifiesOverHttp) {
  ClusterProcess cluster(Options(1));
  ASSERT_TRUE(cluster.Start().ok());
  const int http = cluster.http_port(0);
  const std::string long_name(200, 'x');
  constexpr int kWrites = 2500;
  for (int i = 0; i < kWrites; ++i) {
    absl::StatusOr<HttpAnswer> put =
        cluster.Put(0, absl::StrCat("audited/", long_name, i), "v", Consistency::kDefault);
    ASSERT_TRUE(put.ok()) << put.status();
    ASSERT_EQ(put->status / 100, 2) << put->body;
  }
  // Every write is in the log before the check reads it.
  const std::string last = absl::StrCat(long_name, kWrites - 1);
  bool logged = false;
  for (int attempt = 0; attempt < 200 && !logged; ++attempt) {
    absl::StatusOr<HttpAnswer> answer = GetAudit(http, true, kWrites - 100);
    if (answer.ok() && answer->status == 200) logged = absl::StrContains(answer->body, last);
    if (!logged) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(logged) << "the last audited write never reached the log";
  CliResult online = RunCli({"audit", "verify", absl::StrCat("--http-target=127.0.0.1:", http),
                             absl::StrCat("--cluster-secret=", kSecret)});
  EXPECT_EQ(online.exit_code, 0) << online.output;
  EXPECT_TRUE(absl::StartsWith(online.output, "OK: ")) << online.output;
}

// /health's control.audit_log of node 0: "ok", "lagging", or "" unreadable.
std::string AuditLogHealth(int http) {
  absl::StatusOr<HttpAnswer> health = HttpExchange(http, "GET", "/health", {}, "", absl::Seconds(5));
  if (!health.ok() || health->status != 200) return "";
  const nlohmann::json body = nlohmann::json::parse(health->body, nullptr, false);
  if (!body.is_object() || !body.contains("control")) return "";
  return body["control"].value("audit_log", "");
}

// A node whose audit file cannot be written (its file system is full) says
// so in /health, "lagging", and "ok" again once the file has room and the
// entries that waited are written.
TEST(AuditClusterTest, HealthSaysWhileTheAuditFileLags) {
  ScopedTempDir dir;
  const std::string audit_dir = dir.path() + "/control/audit";
  fs::create_directories(dir.path() + "/control");
  ScopedTmpfs tmpfs(audit_dir, "64k");
  if (!tmpfs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here: " << tmpfs.error();
  ClusterOptions options = Options(1);
  options.node_data_dirs = {dir.path()};
  ClusterProcess cluster(options);
  absl::Status started = cluster.Start();
  ASSERT_TRUE(started.ok()) << started;
  const int http = cluster.http_port(0);
  ASSERT_EQ(AuditLogHealth(http), "ok");
  // Audited writes of 300-byte keys: 64 KiB hold about 150 entries.
  const std::string long_name(300, 'x');
  int written = 0;
  std::string state = "ok";
  while (state != "lagging" && written < 5000) {
    absl::StatusOr<HttpAnswer> put =
        cluster.Put(0, absl::StrCat("audited/", long_name, written++), "v", Consistency::kDefault);
    ASSERT_TRUE(put.ok()) << put.status();
    ASSERT_EQ(put->status / 100, 2) << put->body;  // the data write is not refused
    if (written % 50 == 0) {
      for (int i = 0; i < 20 && (state = AuditLogHealth(http)) == "ok"; ++i) {
        absl::SleepFor(absl::Milliseconds(50));
      }
    }
  }
  ASSERT_EQ(state, "lagging") << "the audit file never filled its 64 KiB in " << written
                              << " audited writes";
  ASSERT_TRUE(tmpfs.Resize("64m").ok());
  // The next entries to arrive are written with those that waited.
  for (int i = 0; i < 400 && state != "ok"; ++i) {
    if (i % 20 == 0) {
      absl::StatusOr<HttpAnswer> put =
          cluster.Put(0, absl::StrCat("audited/after", i), "v", Consistency::kDefault);
      ASSERT_TRUE(put.ok()) << put.status();
    }
    absl::SleepFor(absl::Milliseconds(50));
    state = AuditLogHealth(http);
  }
  EXPECT_EQ(state, "ok");
}

TEST(AuditClusterTest, ARealLogVerifiesAndOfflineEditsAreNamed) {
  ClusterProcess cluster(Options(1));
  ASSERT_TRUE(cluster.Start().ok());
  const int http = cluster.http_port(0);

  // Credentials: none is 401.
  absl::StatusOr<HttpAnswer> refused = GetAudit(http, false);
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_EQ(refused->status, 401) << refused->body;

  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(cluster.Put(0, absl::StrCat("audited/k", i), "v", Consistency::kDefault).ok());
    ASSERT_TRUE(cluster.Put(0, absl::StrCat("plain/k", i), "v", Consistency::kDefault).ok());
  }
  nlohmann::json page = WaitForEntry(http, [](const nlohmann::json& entry) {
    return entry.value("kind", "") == "data.put" &&
           absl::StrContains(entry.value("detail", ""), "audited/k4");
  });
  ASSERT_TRUE(page.is_object()) << "the audited writes never reached the log";
  size_t data_entries = 0;
  for (const nlohmann::json& entry : page["entries"]) {
    EXPECT_FALSE(absl::StrContains(entry.value("detail", ""), "plain/")) << entry.dump();
    if (entry.value("kind", "") == "data.put") ++data_entries;
  }
  EXPECT_EQ(data_entries, 5u);
  // The control plane's own changes are there too (this node's addition).
  EXPECT_TRUE(WaitForEntry(http, [](const nlohmann::json& entry) {
                return entry.value("kind", "") == "AddMember";
              }).is_object());
  const std::string public_key = page.value("public_key", "");

  // Over HTTP.
  CliResult online = RunCli({"audit", "verify", absl::StrCat("--http-target=127.0.0.1:", http),
                             absl::StrCat("--cluster-secret=", kSecret)});
  EXPECT_EQ(online.exit_code, 0) << online.output;
  EXPECT_TRUE(absl::StartsWith(online.output, "OK: ")) << online.output;

  // Offline, the node stopped.
  EXPECT_EQ(cluster.Stop(0), 0);
  const std::string data_dir = cluster.data_dir(0);
  const std::string log_path = data_dir + "/control/audit/log.jsonl";
  CliResult offline = RunCli({"audit", "verify", "--data-dir=" + data_dir,
                              "--public-key=" + public_key});
  ASSERT_EQ(offline.exit_code, 0) << offline.output;
  const std::string good = ReadFile(log_path);
  std::vector<std::string> lines = absl::StrSplit(good, '\n', absl::SkipEmpty());
  ASSERT_GE(lines.size(), 6u);
  const uint64_t last_seq = nlohmann::json::parse(lines.back())["seq"].get<uint64_t>();

  // One byte of entry 3 changed (a character of its kind).
  {
    std::string text = good;
    const size_t at = text.find(lines[2]) + lines[2].find("\"kind\":\"") + 8;
    text[at] = static_cast<char>(text[at] ^ 0x20);
    WriteFile(log_path, text);
    CliResult result = RunCli({"audit", "verify", "--data-dir=" + data_dir,
                               "--public-key=" + public_key});
    EXPECT_EQ(result.exit_code, 2) << result.output;
    EXPECT_TRUE(absl::StrContains(result.output, "entry 3 is bad")) << result.output;
  }
  // Entry 4 removed.
  {
    std::vector<std::string> kept = lines;
    kept.erase(kept.begin() + 3);
    WriteFile(log_path, absl::StrCat(absl::StrJoin(kept, "\n"), "\n"));
    CliResult result = RunCli({"audit", "verify", "--data-dir=" + data_dir,
                               "--public-key=" + public_key});
    EXPECT_EQ(result.exit_code, 2) << result.output;
    EXPECT_TRUE(absl::StrContains(result.output, "entry 4 is bad")) << result.output;
  }
  // Truncated: the last two entries cut.
  {
    std::vector<std::string> kept(lines.begin(), lines.end() - 2);
    WriteFile(log_path, absl::StrCat(absl::StrJoin(kept, "\n"), "\n"));
    CliResult result = RunCli({"audit", "verify", "--data-dir=" + data_dir,
                               "--public-key=" + public_key});
    EXPECT_EQ(result.exit_code, 2) << result.output;
    EXPECT_TRUE(absl::StrContains(result.output, absl::StrCat("entry ", last_seq - 1, " is bad")))
        << result.output;
  }
  // Restored, it verifies again; with another key it does not.
  WriteFile(log_path, good);
  EXPECT_EQ(RunCli({"audit", "verify", "--data-dir=" + data_dir, "--public-key=" + public_key})
                .exit_code,
            0);
  EXPECT_EQ(RunCli({"audit", "verify", "--data-dir=" + data_dir,
                    "--public-key=" + std::string(64, '1')})
                .exit_code,
            2);
}

TEST(AuditClusterTest, EveryNodeHoldsTheSameChainHead) {
  ClusterProcess cluster(Options(3));
  ASSERT_TRUE(cluster.Start().ok());
  for (int node = 0; node < 3; ++node) {
    ASSERT_TRUE(
        cluster.Put(node, absl::StrCat("audited/from", node), "v", Consistency::kDefault).ok());
  }
  // Bounded: until every node's head names the same entry and hash, past
  // the three writes.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  std::vector<std::string> heads;
  while (absl::Now() < deadline) {
    heads.clear();
    for (int node = 0; node < 3; ++node) {
      absl::StatusOr<HttpAnswer> answer = GetAudit(cluster.http_port(node), true);
      if (!answer.ok() || answer->status != 200) break;
      nlohmann::json page = nlohmann::json::parse(answer->body, nullptr, false);
      if (!page.is_object() || !page["head"].is_object()) break;
      size_t writes = 0;
      for (const nlohmann::json& entry : page["entries"]) {
        if (entry.value("kind", "") == "data.put") ++writes;
      }
      if (writes < 3) break;
      heads.push_back(absl::StrCat(page["head"]["seq"].get<uint64_t>(), " ",
                                   page["head"]["hash"].get<std::string>()));
    }
    if (heads.size() == 3 && heads[0] == heads[1] && heads[1] == heads[2]) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_EQ(heads.size(), 3u);
  EXPECT_EQ(heads[0], heads[1]);
  EXPECT_EQ(heads[1], heads[2]);
  for (int node = 0; node < 3; ++node) {
    CliResult result =
        RunCli({"audit", "verify", absl::StrCat("--http-target=127.0.0.1:", cluster.http_port(node)),
                absl::StrCat("--cluster-secret=", kSecret)});
    EXPECT_EQ(result.exit_code, 0) << "node " << node << ": " << result.output;
  }
}

}  // namespace
}  // namespace logkv::test
