// logkvd as an operator runs it: the config file and its checks, the
// precedence of flags, environment and file, SIGHUP reloads and systemd's
// notifications (through a NOTIFY_SOCKET this test binds). Every logkvd runs
// as a child process on ports chosen by the kernel, with bounded waits.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/config_file.h"
#include "tests/engine/test_util.h"
#include "tests/rest/http_client.h"
#include "tests/server/logkvd_process.h"

extern char** environ;

namespace logkv::test {
namespace {

using server::ConfigSetting;
using server::ParseConfig;
using server::SettingType;

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

// ==== The file's checks, without logkvd ================================================

std::optional<SettingType> FakeLookup(absl::string_view name) {
  if (name == "data_dir" || name == "log_level") return SettingType::kString;
  if (name == "http") return SettingType::kList;
  if (name == "repair") return SettingType::kBool;
  if (name == "threads") return SettingType::kInt32;
  if (name == "max_key_bytes") return SettingType::kUint32;
  if (name == "segment_bytes") return SettingType::kUint64;
  if (name == "checkpoint_ratio") return SettingType::kDouble;
  return std::nullopt;
}

TEST(ConfigFileTest, ReadsEveryType) {
  absl::StatusOr<std::vector<ConfigSetting>> settings = ParseConfig(
      "# a comment\n"
      "data-dir = \"/var/lib/logkv\"\n"
      "http = [\"127.0.0.1:8080\", \"[::1]:8080\"]\n"
      "repair = true\n"
      "threads = -1\n"
      "max_key_bytes = 4096\n"
      "segment-bytes = 67_108_864\n"
      "checkpoint-ratio = 0.25\n",
      "x.toml", FakeLookup);
  ASSERT_TRUE(settings.ok()) << settings.status();
  ASSERT_EQ(settings->size(), 7u);
  EXPECT_EQ((*settings)[0].name, "data_dir");
  EXPECT_EQ((*settings)[0].value, "/var/lib/logkv");
  EXPECT_EQ((*settings)[0].line, 2);
  EXPECT_EQ((*settings)[1].value, "127.0.0.1:8080,[::1]:8080");
  EXPECT_EQ((*settings)[2].value, "true");
  EXPECT_EQ((*settings)[3].value, "-1");
  EXPECT_EQ((*settings)[4].name, "max_key_bytes");
  EXPECT_EQ((*settings)[5].value, "67108864");
  EXPECT_EQ((*settings)[6].value, "0.25");
  // An integer serves where a number is asked; text, infinity and NaN do not.
  for (const auto& [line, expected] :
       std::vector<std::pair<std::string, std::string>>{{"checkpoint-ratio = 1\n", ""},
                                                        {"checkpoint-ratio = \"0.5\"\n",
                                                         "expected a number"},
                                                        {"checkpoint-ratio = inf\n",
                                                         "not a finite number"},
                                                        {"checkpoint-ratio = nan\n",
                                                         "not a finite number"}}) {
    SCOPED_TRACE(line);
    absl::StatusOr<std::vector<ConfigSetting>> one = ParseConfig(line, "y.toml", FakeLookup);
    if (expected.empty()) {
      ASSERT_TRUE(one.ok()) << one.status();
      EXPECT_EQ((*one)[0].value, "1");
    } else {
      ASSERT_FALSE(one.ok());
      EXPECT_TRUE(absl::StrContains(one.status().message(), expected)) << one.status();
    }
  }
}

TEST(ConfigFileTest, NamesFileLineAndKeyOfEachProblem) {
  absl::StatusOr<std::vector<ConfigSetting>> settings = ParseConfig(
      "data-dir = 5\n"
      "no-such-thing = 1\n"
      "repair = \"yes\"\n"
      "max-key-bytes = -1\n"
      "threads = 1.5\n"
      "data_dir = \"again\"\n"
      "[storage]\n",
      "/etc/logkv/logkvd.toml", FakeLookup);
  ASSERT_FALSE(settings.ok());
  const std::vector<std::string> lines = absl::StrSplit(settings.status().message(), '\n');
  ASSERT_EQ(lines.size(), 7u) << settings.status();
  EXPECT_TRUE(absl::StartsWith(lines[0], "/etc/logkv/logkvd.toml:1: data-dir: expected a string"))
      << lines[0];
  EXPECT_TRUE(absl::StartsWith(lines[1], "/etc/logkv/logkvd.toml:2: no-such-thing: unknown"))
      << lines[1];
  EXPECT_TRUE(absl::StrContains(lines[2], ":3: repair: expected a boolean")) << lines[2];
  EXPECT_TRUE(absl::StrContains(lines[3], ":4: max-key-bytes: -1 is out of range")) << lines[3];
  EXPECT_TRUE(absl::StrContains(lines[4], ":5: threads: expected an integer")) << lines[4];
  EXPECT_TRUE(absl::StrContains(lines[5], ":6: data_dir: set twice (also on line 1)"))
      << lines[5];
  EXPECT_TRUE(absl::StrContains(lines[6], ":7: storage: tables are not settings")) << lines[6];
}

TEST(ConfigFileTest, SyntaxErrorNamesLineAndColumn) {
  absl::StatusOr<std::vector<ConfigSetting>> settings =
      ParseConfig("repair = true\nthreads = \n", "bad.toml", FakeLookup);
  ASSERT_FALSE(settings.ok());
  EXPECT_TRUE(absl::StartsWith(settings.status().message(), "bad.toml:2:")) << settings.status();
}

TEST(ConfigFileTest, MissingFileIsNotFound) {
  absl::StatusOr<std::vector<ConfigSetting>> settings =
      server::ReadConfigFile("/nonexistent/logkvd.toml", FakeLookup);
  ASSERT_FALSE(settings.ok());
  EXPECT_TRUE(absl::IsNotFound(settings.status())) << settings.status();
  EXPECT_TRUE(absl::StrContains(settings.status().message(), "/nonexistent/logkvd.toml"));
}

// ==== logkvd's settings: precedence and errors =========================================

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string ReadAll(int fd) {
  std::string text;
  char buffer[4096];
  ssize_t n;
  while ((n = ::read(fd, buffer, sizeof(buffer))) > 0) text.append(buffer, n);
  return text;
}

// Runs logkvd to its end (it exits at once: --print-config or an error),
// with the environment of this test less every LOGKV_* variable, plus env.
RunResult RunLogkvd(const std::vector<std::string>& args, const std::vector<std::string>& env) {
  std::vector<std::string> environment;
  for (char** variable = environ; *variable != nullptr; ++variable) {
    if (!absl::StartsWith(*variable, "LOGKV_")) environment.emplace_back(*variable);
  }
  environment.insert(environment.end(), env.begin(), env.end());
  std::vector<std::string> argv_storage = {LOGKVD_PATH};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : argv_storage) argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (std::string& variable : environment) envp.push_back(variable.data());
  envp.push_back(nullptr);

  ScopedTempDir dir;
  const std::string out_path = dir.Subdir("out");
  const std::string err_path = dir.Subdir("err");
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(out, STDOUT_FILENO);
    ::dup2(err, STDERR_FILENO);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  RunResult result;
  // logkvd exits by itself here; a bounded wait all the same.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (absl::Now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      break;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  const int out = ::open(out_path.c_str(), O_RDONLY);
  const int err = ::open(err_path.c_str(), O_RDONLY);
  result.out = ReadAll(out);
  result.err = ReadAll(err);
  ::close(out);
  ::close(err);
  return result;
}

// The line "name = value  # source" of --print-config's output.
std::string PrintedLine(const std::string& output, absl::string_view name) {
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    if (absl::StartsWith(line, absl::StrCat(name, " = "))) return std::string(line);
  }
  return "";
}

// One row of docs/operations.md's precedence table: which of file,
// environment and flag set --threads, and what is in effect.
struct PrecedenceRow {
  const char* name;
  bool file;
  bool environment;
  bool flag;
  const char* expected;  // "threads = N  # source"
};

void PrintTo(const PrecedenceRow& row, std::ostream* os) { *os << row.name; }

class PrecedenceTest : public testing::TestWithParam<PrecedenceRow> {};

TEST_P(PrecedenceTest, HighestSourceWins) {
  const PrecedenceRow& row = GetParam();
  ScopedTempDir dir;
  const std::string config = dir.Subdir("logkvd.toml");
  WriteFile(config, "threads = 3\n");
  std::vector<std::string> args = {"--print-config"};
  if (row.file) args.push_back("--config=" + config);
  if (row.flag) args.push_back("--threads=5");
  std::vector<std::string> env;
  if (row.environment) env.push_back("LOGKV_THREADS=4");
  RunResult result = RunLogkvd(args, env);
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(PrintedLine(result.out, "threads"), row.expected) << result.out;
}

INSTANTIATE_TEST_SUITE_P(
    Table, PrecedenceTest,
    testing::Values(PrecedenceRow{"Default", false, false, false, "threads = 0  # default"},
                    PrecedenceRow{"File", true, false, false, "threads = 3  # config file"},
                    PrecedenceRow{"Environment", false, true, false, "threads = 4  # environment"},
                    PrecedenceRow{"Flag", false, false, true, "threads = 5  # command line"},
                    PrecedenceRow{"EnvironmentOverFile", true, true, false,
                                  "threads = 4  # environment"},
                    PrecedenceRow{"FlagOverFile", true, false, true, "threads = 5  # command line"},
                    PrecedenceRow{"FlagOverEnvironment", false, true, true,
                                  "threads = 5  # command line"},
                    PrecedenceRow{"FlagOverBoth", true, true, true, "threads = 5  # command line"}),
    [](const testing::TestParamInfo<PrecedenceRow>& info) { return info.param.name; });

TEST(LogkvdConfigTest, ConfigFromEnvironmentAndDashedFlags) {
  ScopedTempDir dir;
  const std::string config = dir.Subdir("logkvd.toml");
  WriteFile(config,
            "log-level = \"warning\"\nhttp = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nrepair = true\n"
            "jwt-secret = \"do-not-print-me\"\ncheckpoint-ratio = 0.25\n");
  RunResult result = RunLogkvd({"--print-config", "--fsync-interval-ms=7"},
                               {"LOGKV_CONFIG=" + config});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(PrintedLine(result.out, "log-level"), "log-level = 'warning'  # config file");
  EXPECT_EQ(PrintedLine(result.out, "http"), "http = '127.0.0.1:1,127.0.0.1:2'  # config file");
  EXPECT_EQ(PrintedLine(result.out, "repair"), "repair = true  # config file");
  EXPECT_EQ(PrintedLine(result.out, "checkpoint-ratio"), "checkpoint-ratio = 0.25  # config file");
  EXPECT_EQ(PrintedLine(result.out, "fsync-interval-ms"),
            "fsync-interval-ms = 7  # command line");
  EXPECT_FALSE(absl::StrContains(result.out, "do-not-print-me")) << result.out;
  EXPECT_TRUE(absl::StrContains(result.out, "# jwt-secret = (hidden)  # config file"));
}

// --print-config checks what it printed as a start would: settings logkvd
// would refuse print, then exit 1 with the refusal.
TEST(LogkvdConfigTest, PrintConfigSaysWhenTheSettingsWouldBeRefused) {
  RunResult result = RunLogkvd({"--print-config", "--checkpoint-ratio=-1"}, {});
  EXPECT_EQ(result.exit_code, 1) << result.out << result.err;
  EXPECT_EQ(PrintedLine(result.out, "checkpoint-ratio"), "checkpoint-ratio = -1  # command line");
  EXPECT_TRUE(absl::StrContains(result.err, "--checkpoint_ratio must be between")) << result.err;
  result = RunLogkvd({"--print-config", "--log-level=loud"}, {});
  EXPECT_EQ(result.exit_code, 1) << result.out << result.err;
  EXPECT_TRUE(absl::StrContains(result.err, "--log_level must be")) << result.err;
  result = RunLogkvd({"--print-config", "--tls-cert=/no/such.pem"}, {});
  EXPECT_EQ(result.exit_code, 1) << result.out << result.err;
  EXPECT_TRUE(absl::StrContains(result.err, "--tls-cert and --tls-key go together")) << result.err;
  // Settings that pass: exit 0, and nothing is opened or made.
  ScopedTempDir dir;
  const std::string data_dir = dir.Subdir("not-made");
  result = RunLogkvd({"--print-config", "--data-dir=" + data_dir}, {});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_FALSE(std::filesystem::exists(data_dir));
}

TEST(LogkvdConfigTest, TheDefaultConfigFileIsValid) {
  RunResult result =
      RunLogkvd({"--print-config", "--config=" PACKAGING_DIR "/logkvd.toml"}, {});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(PrintedLine(result.out, "data-dir"), "data-dir = '/var/lib/logkv'  # config file");
}

// A bad file stops logkvd before it opens anything: exit 1, one error line
// naming the file, the line and the key.
struct BadFile {
  const char* name;
  const char* text;  // null: the file does not exist
  const char* error;
};

void PrintTo(const BadFile& file, std::ostream* os) { *os << file.name; }

class BadConfigTest : public testing::TestWithParam<BadFile> {};

TEST_P(BadConfigTest, ExitsWithAClearError) {
  ScopedTempDir dir;
  const std::string config = dir.Subdir("logkvd.toml");
  if (GetParam().text != nullptr) WriteFile(config, GetParam().text);
  RunResult result =
      RunLogkvd({"--config=" + config, "--data-dir=" + dir.Subdir("data"), "--listen=127.0.0.1:0",
                 "--http="},
                {});
  EXPECT_EQ(result.exit_code, 1) << result.err;
  EXPECT_TRUE(absl::StrContains(result.err, absl::StrCat(config, GetParam().error))) << result.err;
  EXPECT_FALSE(absl::StrContains(result.err, "listening on")) << result.err;
}

INSTANTIATE_TEST_SUITE_P(
    Files, BadConfigTest,
    testing::Values(
        BadFile{"UnknownKey", "log-level = \"info\"\nlisten-port = 7070\n",
                ":2: listen-port: unknown setting"},
        BadFile{"WrongType", "threads = \"four\"\n", ":1: threads: expected an integer"},
        BadFile{"WrongBoolean", "\nrepair = 1\n", ":2: repair: expected a boolean"},
        BadFile{"OutOfRange", "max-key-bytes = 5000000000\n", ":1: max-key-bytes: 5000000000"},
        BadFile{"SyntaxError", "log-level = info\n", ":1:"},
        BadFile{"ConfigInConfig", "config = \"other.toml\"\n", ":1: config: unknown setting"},
        BadFile{"Missing", nullptr, ": cannot read the config file: No such file"}),
    [](const testing::TestParamInfo<BadFile>& info) { return info.param.name; });

// ==== SIGHUP ===========================================================================

// Waits (bounded) until the process's output holds text.
bool WaitForOutput(LogkvdProcess& process, absl::string_view text,
                   absl::Duration timeout = absl::Seconds(20)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (absl::StrContains(process.Output(), text)) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::StrContains(process.Output(), text);
}

int CountOf(const std::string& text, const std::string& what) {
  int count = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
    ++count;
  }
  return count;
}

HttpAnswer Call(int port, const std::string& method, const std::string& target,
                const HttpHeaders& headers = {}, const std::string& body = "") {
  absl::StatusOr<HttpAnswer> answer = Fetch(port, method, target, headers, body);
  EXPECT_TRUE(answer.ok()) << answer.status();
  return answer.ok() ? *answer : HttpAnswer{};
}

// An API key of a new account on the node.
std::string NewApiKey(int port) {
  const nlohmann::json account = {
      {"email", "ops@example.com"}, {"username", "ops"}, {"password", "securepass123"}};
  const HttpHeaders json_type = {{"Content-Type", "application/json"}};
  EXPECT_EQ(Call(port, "POST", "/signup", json_type, account.dump()).status, 201);
  const HttpAnswer login = Call(
      port, "POST", "/login", json_type,
      nlohmann::json({{"email", "ops@example.com"}, {"password", "securepass123"}}).dump());
  const std::string token = login.Json().value("access_token", "");
  const HttpAnswer key = Call(port, "POST", "/apikeys", {{"Authorization", "Bearer " + token}},
                              nlohmann::json({{"name", "ops"},
                                              {"scopes", {"read", "write"}},
                                              {"expires_in_days", 1}})
                                  .dump());
  EXPECT_EQ(key.status, 201) << key.body;
  return key.Json().value("key", "");
}

// Requests until one is refused with 429 (at most limit): how many passed.
int PassedBeforeRefusal(int port, const std::string& api_key, int limit) {
  for (int i = 0; i < limit; ++i) {
    const HttpAnswer answer = Call(port, "GET", "/v1/kv/absent", {{"X-API-Key", api_key}});
    if (answer.status == 429) return i;
  }
  return limit;
}

TEST(LogkvdReloadTest, SighupAppliesLogLevelAndRateLimit) {
  ScopedTempDir dir;
  const std::string config = dir.Subdir("logkvd.toml");
  WriteFile(config,
            "auth = \"on\"\nrate-limit = 0\nlog-level = \"info\"\nthreads = 1\n");
  LogkvdProcess process(LOGKVD_PATH,
                        {"--config=" + config, "--data-dir=" + dir.Subdir("data")});
  ASSERT_TRUE(process.Start().ok()) << process.Output();
  const int http = process.http_port();
  const std::string api_key = NewApiKey(http);
  ASSERT_FALSE(api_key.empty());

  // Rate limit off: nothing is refused. A bad request line is logged at
  // debug level only: not now.
  EXPECT_EQ(PassedBeforeRefusal(http, api_key, 10), 10);
  auto send_garbage = [http] {
    absl::StatusOr<HttpConnection> connection = HttpConnection::Connect(http);
    ASSERT_TRUE(connection.ok());
    ASSERT_TRUE(connection->Send("NOT HTTP AT ALL\r\n\r\n").ok());
    connection->WaitClosed(absl::Seconds(10));
  };
  send_garbage();
  EXPECT_EQ(CountOf(process.Output(), "DEBUG"), 0) << process.Output();

  // The file now asks for debug logs, 1 request a minute with a burst of 2,
  // and a different thread count (needs a restart).
  WriteFile(config,
            "auth = \"on\"\nrate-limit = 1\nrate-limit-burst = 2\nlog-level = \"debug\"\n"
            "threads = 2\n");
  ASSERT_EQ(::kill(process.pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitForOutput(process, "SIGHUP: reloaded")) << process.Output();
  const std::string output = process.Output();
  EXPECT_TRUE(absl::StrContains(output, "log-level info -> debug")) << output;
  EXPECT_TRUE(absl::StrContains(output, "rate-limit 0 -> 1")) << output;
  EXPECT_TRUE(absl::StrContains(output, "rate-limit-burst 10 -> 2")) << output;
  EXPECT_TRUE(absl::StrContains(output, "applied only by a restart: threads (1 -> 2)")) << output;

  // Observed: the burst of 2 passes, the third is refused; debug lines appear.
  EXPECT_EQ(PassedBeforeRefusal(http, api_key, 10), 2);
  send_garbage();
  EXPECT_TRUE(WaitForOutput(process, "DEBUG")) << process.Output();

  // Back to no limit and info; a broken file changes nothing.
  WriteFile(config, "auth = \"on\"\nrate-limit = \"many\"\n");
  ASSERT_EQ(::kill(process.pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitForOutput(process, "settings in effect are kept")) << process.Output();
  EXPECT_TRUE(absl::StrContains(process.Output(), "rate-limit: expected an integer"));
  EXPECT_EQ(PassedBeforeRefusal(http, api_key, 1), 0);  // still limited

  WriteFile(config, "auth = \"on\"\nrate-limit = 0\nthreads = 1\n");
  ASSERT_EQ(::kill(process.pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitForOutput(process, "rate-limit 1 -> 0")) << process.Output();
  EXPECT_TRUE(absl::StrContains(process.Output(), "log-level debug -> info"));
  EXPECT_EQ(PassedBeforeRefusal(http, api_key, 10), 10);
  EXPECT_EQ(process.Stop(), 0);
}

TEST(LogkvdReloadTest, FlagsStillWinAfterAReload) {
  ScopedTempDir dir;
  const std::string config = dir.Subdir("logkvd.toml");
  WriteFile(config, "log-level = \"info\"\n");
  LogkvdProcess process(LOGKVD_PATH, {"--config=" + config, "--data-dir=" + dir.Subdir("data"),
                                      "--log-level=warning", "--http="});
  ASSERT_TRUE(process.Start().ok()) << process.Output();
  WriteFile(config, "log-level = \"debug\"\n");
  ASSERT_EQ(::kill(process.pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitForOutput(process, "SIGHUP: reloaded")) << process.Output();
  EXPECT_TRUE(absl::StrContains(process.Output(), "log-level (command line)")) << process.Output();
  EXPECT_TRUE(absl::StrContains(process.Output(), "nothing that can change at run time changed"));
  EXPECT_EQ(process.Stop(), 0);
}

TEST(LogkvdReloadTest, SighupChangesTheBackupSchedule) {
  ScopedTempDir dir;
  const std::string config = dir.Subdir("logkvd.toml");
  const std::string backups = dir.Subdir("backups");
  WriteFile(config, absl::StrCat("backup-dir = \"", backups, "\"\nthreads = 1\n"));
  LogkvdProcess process(LOGKVD_PATH, {"--config=" + config, "--data-dir=" + dir.Subdir("data"),
                                      "--cluster-secret=ops-secret"});
  ASSERT_TRUE(process.Start().ok()) << process.Output();
  const int http = process.http_port();
  const HttpHeaders admin = {{"X-Cluster-Secret", "ops-secret"}};
  auto status = [&] { return Call(http, "GET", "/api/backup/status", admin).Json(); };
  EXPECT_TRUE(status()["schedule"].is_null()) << status().dump();
  EXPECT_TRUE(status()["next_run"].is_null()) << status().dump();

  // A schedule, a retention and a rate, applied by SIGHUP.
  WriteFile(config, absl::StrCat("backup-dir = \"", backups,
                                 "\"\nthreads = 1\nbackup-schedule = \"30 3 * * *\"\n"
                                 "backup-retention = 2\nbackup-rate-limit = 1048576\n"));
  ASSERT_EQ(::kill(process.pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitForOutput(process, "SIGHUP: reloaded")) << process.Output();
  EXPECT_TRUE(absl::StrContains(process.Output(), "backup-schedule  -> 30 3 * * *"))
      << process.Output();
  EXPECT_EQ(status()["schedule"], "30 3 * * *") << status().dump();
  EXPECT_FALSE(status()["next_run"].is_null()) << status().dump();

  // A schedule that does not parse changes nothing.
  WriteFile(config, absl::StrCat("backup-dir = \"", backups,
                                 "\"\nthreads = 1\nbackup-schedule = \"at noon\"\n"));
  ASSERT_EQ(::kill(process.pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitForOutput(process, "settings in effect are kept")) << process.Output();
  EXPECT_EQ(status()["schedule"], "30 3 * * *") << status().dump();
  EXPECT_EQ(process.Stop(), 0);
}

// ==== systemd's notifications ==========================================================

// A unix datagram socket standing in for systemd's NOTIFY_SOCKET.
class NotifySocket {
 public:
  explicit NotifySocket(std::string path) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un address = {};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path_.c_str(), sizeof(address.sun_path) - 1);
    bound_ = fd_ >= 0 &&
             ::bind(fd_, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~NotifySocket() {
    if (fd_ >= 0) ::close(fd_);
    ::unlink(path_.c_str());
  }
  bool bound() const { return bound_; }

  // Messages until one holds text (bounded): all of them, joined by "|".
  std::string WaitFor(absl::string_view text, absl::Duration timeout = absl::Seconds(20)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!absl::StrContains(received_, text) && absl::Now() < deadline) {
      pollfd poll_fd = {fd_, POLLIN, 0};
      const int wait_ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
      if (::poll(&poll_fd, 1, std::max(wait_ms, 1)) <= 0) continue;
      char buffer[4096];
      const ssize_t n = ::recv(fd_, buffer, sizeof(buffer), 0);
      if (n > 0) absl::StrAppend(&received_, std::string(buffer, n), "|");
    }
    return received_;
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool bound_ = false;
  std::string received_;
};

TEST(LogkvdSystemdTest, NotifiesReadyWatchdogReloadingAndStopping) {
  ScopedTempDir dir;
  NotifySocket notify(dir.Subdir("notify"));
  ASSERT_TRUE(notify.bound());
  const std::string config = dir.Subdir("logkvd.toml");
  WriteFile(config, "log-level = \"info\"\n");
  // The child inherits these; they are removed again before any other test.
  ::setenv("NOTIFY_SOCKET", dir.Subdir("notify").c_str(), 1);
  ::setenv("WATCHDOG_USEC", "200000", 1);
  LogkvdProcess process(LOGKVD_PATH,
                        {"--config=" + config, "--data-dir=" + dir.Subdir("data"), "--http="});
  const absl::Status started = process.Start();
  ::unsetenv("NOTIFY_SOCKET");
  ::unsetenv("WATCHDOG_USEC");
  ASSERT_TRUE(started.ok()) << process.Output();

  EXPECT_TRUE(absl::StrContains(notify.WaitFor("READY=1"), "READY=1"));
  EXPECT_TRUE(absl::StrContains(notify.WaitFor("WATCHDOG=1"), "WATCHDOG=1"));
  ASSERT_EQ(::kill(process.pid(), SIGHUP), 0);
  EXPECT_TRUE(absl::StrContains(notify.WaitFor("RELOADING=1"), "RELOADING=1"));
  ASSERT_EQ(::kill(process.pid(), SIGTERM), 0);
  const std::string messages = notify.WaitFor("STOPPING=1");
  EXPECT_TRUE(absl::StrContains(messages, "STOPPING=1")) << messages;
  // READY comes before everything else.
  EXPECT_TRUE(absl::StartsWith(messages, "READY=1")) << messages;
  EXPECT_EQ(process.WaitExit(absl::Seconds(20)), 0);
}

TEST(LogkvdSystemdTest, RunsWithoutSystemd) {
  // No NOTIFY_SOCKET: sd_notify does nothing and logkvd serves as usual.
  ScopedTempDir dir;
  ::unsetenv("NOTIFY_SOCKET");
  LogkvdProcess process(LOGKVD_PATH, {"--data-dir=" + dir.Subdir("data"), "--http="});
  ASSERT_TRUE(process.Start().ok()) << process.Output();
  EXPECT_EQ(process.Stop(), 0);
}

}  // namespace
}  // namespace logkv::test
