// logkv-bench: a load generator for logkvd that takes redis-benchmark's flags
// and prints redis-benchmark's output (including its CSV columns), so the two
// can be run with identical parameters and compared side by side
// (bench/vs-redis.sh).
//
// Workloads (-t, always run in this order, so GET finds what SET wrote):
//   set    Put of a -d byte value ('x' repeated, like redis-benchmark's).
//   get    Get; a missing key is counted as a miss, not as an error.
//   mixed  Put and Get in the --ratio S:G proportion (default 1:1).
// Keys: without -r every request uses the one key "key:__rand_int__", as
// redis-benchmark does; with -r N each request uses "key:%012d" of a number in
// [0, N), uniformly or, with --zipf THETA, zipf-distributed (key 0 hottest).
//
// Each of --threads threads runs a libuv loop with its share of the -c
// connections. A connection works in batches of -P requests, as
// redis-benchmark does: it sends P frames in one write, waits for all P
// answers, then sends the next P, until -n requests have been issued across
// all connections (or --duration has passed). Latency is measured per request
// from the moment its frame is handed to the socket until its answer is read.
//
// --resp sends the same load to a Redis server in Redis's protocol (RESP2:
// SET and GET commands, the replies read with hiredis's reader, as
// redis-benchmark reads them), so that one client's figures compare the two
// servers: two load tools that differ in speed keep different numbers of
// requests at their servers, and latency follows that number.
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "absl/random/distributions.h"
#include "absl/random/random.h"
#include "absl/random/zipf_distribution.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "protocol/frame.h"
#include "protocol/logkv_generated.h"
#include "protocol/tls_bio.h"
#include "protocol/version.h"
#include "tools/latency_histogram.h"

namespace logkv::tools {
namespace {

namespace protocol = ::logkv::protocol;
using Clock = std::chrono::steady_clock;

// The low bits of a request_id name the pipeline slot it occupies, so an
// answer finds its slot without a map even when answers come out of order;
// the high bits are a per-connection serial number that catches a stale or
// duplicated answer.
constexpr int kSlotBits = 16;
constexpr uint64_t kSlotMask = (uint64_t{1} << kSlotBits) - 1;
constexpr int kMaxPipeline = 1 << kSlotBits;
// redis-benchmark replaces __rand_int__ with 12 digits, so -r is capped there.
constexpr int kKeyDigits = 12;
constexpr uint64_t kMaxKeyspace = 1'000'000'000'000;
// Bytes asked of the decoder per read: large enough for many pipelined answers.
constexpr size_t kReadChunkBytes = 64 * 1024;

enum class Workload { kSet, kGet, kMixed };
enum class Operation : uint8_t { kSet, kGet };

const char* WorkloadName(Workload workload) {
  switch (workload) {
    case Workload::kSet:
      return "SET";
    case Workload::kGet:
      return "GET";
    case Workload::kMixed:
      return "MIXED";
  }
  return "?";
}

// ---- Command line --------------------------------------------------------

// A server to connect to (-h and -p, or one of --hosts).
struct Endpoint {
  std::string host;
  int port = 0;
};

struct Config {
  bool version = false;  // --version: print it and exit
  // The servers, from --hosts or -h and -p (one): connection i goes to
  // endpoints[i % size].
  std::vector<Endpoint> endpoints;
  int clients = 50;
  int64_t requests = 100'000;
  int pipeline = 1;
  int value_bytes = 3;
  uint64_t keyspace = 0;  // 0: the one fixed key, like redis-benchmark without -r
  std::vector<Workload> workloads;
  bool quiet = false;
  bool csv = false;
  bool csv_p999 = false;  // a trailing p999_latency_ms column in the CSV
  int threads = 1;
  int ratio_set = 1;
  int ratio_get = 1;
  double zipf_theta = 0;                           // 0: uniform
  absl::Duration duration = absl::ZeroDuration();  // zero: run -n requests
  int64_t rate = 0;  // --rate: requests a second over all connections; 0: as fast as answered
  std::string fsync_mode;  // a label for the record, printed with the results
  // Sent in every Get and Put (a cluster's eventual or strong path).
  protocol::Consistency consistency = protocol::Consistency::Default;
  // TLS, with redis-benchmark's flags: --tls --cacert --cert --key --sni.
  bool tls = false;
  std::string cacert, cert, key, sni;
  // With accounts on: the API key each connection sends in its Hello, and
  // the user whose namespace the keys are in (0: the key's own).
  std::string auth;
  uint64_t namespace_user = 0;
  // --resp: Redis's protocol, for a Redis server.
  bool resp = false;
};

constexpr absl::string_view kUsage = R"(Usage: logkv-bench [OPTIONS]

Load generator for logkvd with redis-benchmark's flags and output (and, with
--resp, for redis-server).

 -h <hostname>      Server hostname (default 127.0.0.1)
 -p <port>          Server port (default 7070)
 --hosts <h:p,...>  Spread the connections over these servers (a cluster's
                    nodes), round robin: connection i to the (i mod count)th;
                    instead of -h and -p. Each test's figures are the whole
                    load's. IPv6 addresses in brackets: [::1]:7070
 -c <clients>       Number of parallel connections (default 50)
 -n <requests>      Total number of requests per test (default 100000)
 -d <size>          Value size of SET in bytes (default 3)
 -r <keyspacelen>   Use random keys "key:%012d" in [0, keyspacelen); without
                    it every request uses the same key
 -P <numreq>        Requests in flight per connection (default 1)
 -t <tests>         Comma-separated tests: set, get, mixed (default set,get)
 -q                 Quiet: one line per test
 --csv              Output in CSV format (redis-benchmark's columns)
 --csv-p999         With --csv: adds a last column, p999_latency_ms (the
                    99.9th percentile; redis-benchmark's CSV has none)
 --threads <num>    Event-loop threads; connections are split among them (default 1)
 --ratio <S:G>      SET:GET proportion of the mixed test (default 1:1); without
                    -t it selects the mixed test
 --zipf <theta>     Zipf-distributed keys over -r's keyspace (e.g. 0.99)
 --duration <time>  Run each test for this long instead of -n (e.g. 30s, 2m)
 --rate <rps>       Send at most this many requests a second over all
                    connections (a steady background load; default: as fast
                    as the server answers). Latency is still from each
                    request's send
 --fsync-mode <label>  Recorded with the results (e.g. interval); adds a
                    trailing "fsync_mode" CSV column
 --consistency <level>  default, eventual or strong: the consistency level sent
                    with every request (a cluster's W/R; default: the node's)
 --tls              Connect with TLS (the server runs with --tls-cert)
 --cacert <file>    With --tls: CA the server's certificate must chain to
 --cert <file>      With --tls: client certificate (--tls-client-auth)
 --key <file>       With --tls: private key of --cert
 --sni <host>       With --tls: the name the server's certificate must carry
                    (default: -h)
 -a <api key>       Authenticate each connection with this API key (Hello)
 --resp             Speak Redis's protocol (RESP2) to a Redis server: SET and
                    GET commands with the same keys, values and pipelining,
                    so one client measures both servers (not with -a,
                    --namespace or --consistency)
 --namespace <id>   With -a: address this user's namespace (its ACLs apply)
 --help             Output this help and exit
 --version          Output the version and exit
)";

absl::Status ParseInt(absl::string_view flag, absl::string_view text, int64_t min_value,
                      int64_t max_value, int64_t* out) {
  int64_t value;
  if (!absl::SimpleAtoi(text, &value) || value < min_value || value > max_value) {
    return absl::InvalidArgumentError(absl::StrCat("invalid value '", text, "' for ", flag,
                                                   ": want an integer in [", min_value, ", ",
                                                   max_value, "]"));
  }
  *out = value;
  return absl::OkStatus();
}

template <typename T>
absl::Status ParseIntInto(absl::string_view flag, absl::string_view text, int64_t min_value,
                          int64_t max_value, T* out) {
  int64_t value;
  if (absl::Status s = ParseInt(flag, text, min_value, max_value, &value); !s.ok()) return s;
  *out = static_cast<T>(value);
  return absl::OkStatus();
}

absl::Status ParseWorkloads(absl::string_view text, std::vector<Workload>* out) {
  bool set = false, get = false, mixed = false;
  for (absl::string_view name : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    const std::string lower = absl::AsciiStrToLower(absl::StripAsciiWhitespace(name));
    if (lower == "set") {
      set = true;
    } else if (lower == "get") {
      get = true;
    } else if (lower == "mixed") {
      mixed = true;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown test '", name, "' in -t: logkv-bench knows set, get, mixed"));
    }
  }
  out->clear();
  if (set) out->push_back(Workload::kSet);
  if (get) out->push_back(Workload::kGet);
  if (mixed) out->push_back(Workload::kMixed);
  if (out->empty()) return absl::InvalidArgumentError("-t names no test");
  return absl::OkStatus();
}

// redis-benchmark's flags are single letters whose value follows with or
// without a space (-c 50, -c50), which absl flags cannot express, so the
// command line is parsed here; long flags take "--flag value" or "--flag=value".
// --hosts: "host:port" items separated by commas; an IPv6 host in brackets.
absl::Status ParseEndpoints(absl::string_view value, std::vector<Endpoint>* endpoints) {
  endpoints->clear();
  for (absl::string_view item : absl::StrSplit(value, ',')) {
    const size_t colon = item.rfind(':');
    absl::string_view host =
        colon == absl::string_view::npos ? absl::string_view() : item.substr(0, colon);
    if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) {
      host = host.substr(1, host.size() - 2);
    }
    Endpoint endpoint{std::string(host), 0};
    if (host.empty() ||
        !ParseIntInto("--hosts", item.substr(colon + 1), 1, 65535, &endpoint.port).ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid --hosts item '", item, "': want host:port"));
    }
    endpoints->push_back(std::move(endpoint));
  }
  return absl::OkStatus();
}

absl::StatusOr<Config> ParseCommandLine(int argc, char** argv, bool* help) {
  Config config;
  bool have_tests = false, have_ratio = false, have_host_or_port = false;
  Endpoint single{"127.0.0.1", 7070};  // -h and -p
  *help = false;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    std::string flag;
    std::optional<absl::string_view> inline_value;
    if (absl::StartsWith(arg, "--")) {
      const size_t equals = arg.find('=');
      flag = std::string(arg.substr(0, equals));
      if (equals != absl::string_view::npos) inline_value = arg.substr(equals + 1);
      // Accept --fsync_mode as well as --fsync-mode, as the server's flags do.
      std::replace(flag.begin() + 2, flag.end(), '_', '-');
    } else if (arg.size() >= 2 && arg[0] == '-') {
      flag = std::string(arg.substr(0, 2));
      if (arg.size() > 2) inline_value = arg.substr(2);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected argument '", arg, "': logkv-bench runs its built-in tests only (-t)"));
    }

    if (flag == "--help") {
      *help = true;
      return config;
    }
    if (flag == "--version") {
      config.version = true;
      return config;
    }
    if (flag == "--tls" || flag == "--resp") {
      if (inline_value.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(flag, " takes no value"));
      }
      (flag == "--tls" ? config.tls : config.resp) = true;
      continue;
    }
    if (flag == "-q" || flag == "--csv" || flag == "--csv-p999") {
      if (inline_value.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(flag, " takes no value"));
      }
      (flag == "-q" ? config.quiet : flag == "--csv" ? config.csv : config.csv_p999) = true;
      continue;
    }
    // Every other flag takes a value, attached or in the next argument.
    absl::string_view value;
    if (inline_value.has_value()) {
      value = *inline_value;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat(flag, " needs a value (see --help)"));
    }

    absl::Status status;
    if (flag == "-h") {
      single.host = std::string(value);
      have_host_or_port = true;
    } else if (flag == "-p") {
      status = ParseIntInto(flag, value, 1, 65535, &single.port);
      have_host_or_port = true;
    } else if (flag == "--hosts") {
      status = ParseEndpoints(value, &config.endpoints);
    } else if (flag == "-c") {
      status = ParseIntInto(flag, value, 1, 1'000'000, &config.clients);
    } else if (flag == "-n") {
      status = ParseIntInto(flag, value, 1, int64_t{1} << 48, &config.requests);
    } else if (flag == "-P") {
      status = ParseIntInto(flag, value, 1, kMaxPipeline, &config.pipeline);
    } else if (flag == "-d") {
      status =
          ParseIntInto(flag, value, 0, protocol::Limits{}.max_value_bytes, &config.value_bytes);
    } else if (flag == "-r") {
      status = ParseIntInto(flag, value, 1, kMaxKeyspace, &config.keyspace);
    } else if (flag == "-t") {
      status = ParseWorkloads(value, &config.workloads);
      have_tests = true;
    } else if (flag == "--threads") {
      status = ParseIntInto(flag, value, 1, 1024, &config.threads);
    } else if (flag == "--ratio") {
      const std::vector<absl::string_view> parts = absl::StrSplit(value, ':');
      if (parts.size() != 2) {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid --ratio '", value, "': want SET:GET, e.g. 1:10"));
      }
      status = ParseIntInto("--ratio", parts[0], 0, 1'000'000, &config.ratio_set);
      if (status.ok()) status = ParseIntInto("--ratio", parts[1], 0, 1'000'000, &config.ratio_get);
      if (status.ok() && config.ratio_set + config.ratio_get == 0) {
        status = absl::InvalidArgumentError("--ratio 0:0 has no operations");
      }
      have_ratio = true;
    } else if (flag == "--zipf") {
      if (!absl::SimpleAtod(value, &config.zipf_theta) || !(config.zipf_theta > 0) ||
          config.zipf_theta == 1.0 || !std::isfinite(config.zipf_theta)) {
        status = absl::InvalidArgumentError(
            absl::StrCat("invalid --zipf '", value, "': want theta > 0 and != 1 (YCSB uses 0.99)"));
      }
    } else if (flag == "--rate") {
      status = ParseIntInto(flag, value, 1, 100'000'000, &config.rate);
    } else if (flag == "--duration") {
      if (!absl::ParseDuration(value, &config.duration) ||
          config.duration <= absl::ZeroDuration()) {
        status = absl::InvalidArgumentError(
            absl::StrCat("invalid --duration '", value, "': want a positive duration like 30s"));
      }
    } else if (flag == "--cacert") {
      config.cacert = std::string(value);
    } else if (flag == "--cert") {
      config.cert = std::string(value);
    } else if (flag == "--key") {
      config.key = std::string(value);
    } else if (flag == "--sni") {
      config.sni = std::string(value);
    } else if (flag == "-a") {
      config.auth = std::string(value);
    } else if (flag == "--namespace") {
      if (!absl::SimpleAtoi(value, &config.namespace_user) || config.namespace_user == 0) {
        status = absl::InvalidArgumentError(
            absl::StrCat("invalid --namespace '", value, "': want a user id"));
      }
    } else if (flag == "--fsync-mode") {
      config.fsync_mode = std::string(value);
    } else if (flag == "--consistency") {
      if (value == "default") {
        config.consistency = protocol::Consistency::Default;
      } else if (value == "eventual") {
        config.consistency = protocol::Consistency::Eventual;
      } else if (value == "strong") {
        config.consistency = protocol::Consistency::Strong;
      } else {
        status = absl::InvalidArgumentError(absl::StrCat(
            "invalid --consistency '", value, "': want default, eventual or strong"));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown option ", flag, " (see --help)"));
    }
    if (!status.ok()) return status;
  }

  if (!have_tests) {
    config.workloads = have_ratio ? std::vector<Workload>{Workload::kMixed}
                                  : std::vector<Workload>{Workload::kSet, Workload::kGet};
  }
  if (!config.endpoints.empty() && have_host_or_port) {
    return absl::InvalidArgumentError("give the servers by --hosts or by -h and -p, not both");
  }
  if (config.endpoints.empty()) config.endpoints.push_back(std::move(single));
  if (config.endpoints.size() > static_cast<size_t>(config.clients)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--hosts names ", config.endpoints.size(), " servers for ", config.clients,
        " connections (-c): each server needs one at least"));
  }
  if (config.zipf_theta > 0 && config.keyspace == 0) {
    return absl::InvalidArgumentError("--zipf needs a keyspace: give -r too");
  }
  if (config.resp && (!config.auth.empty() || config.namespace_user != 0 ||
                      config.consistency != protocol::Consistency::Default)) {
    return absl::InvalidArgumentError(
        "--resp sends plain SET and GET commands: -a, --namespace and --consistency are "
        "logkv's");
  }
  // A thread without connections would only add an idle loop.
  config.threads = std::min(config.threads, config.clients);
  return config;
}

// ---- Key choice ----------------------------------------------------------

// Zipfian numbers in [0, n) for 0 < theta < 1 by Gray et al.'s method
// ("Quickly generating billion-record synthetic databases", SIGMOD 1994), as
// YCSB does. absl::zipf_distribution covers only theta > 1, and YCSB's usual
// 0.99 lies below that, so both are needed.
class GrayZipfian {
 public:
  GrayZipfian(uint64_t n, double theta) : n_(n) {
    zeta_n_ = Zeta(n, theta);
    alpha_ = 1.0 / (1.0 - theta);
    const double zeta_2 = Zeta(2, theta);
    eta_ = (1.0 - std::pow(2.0 / static_cast<double>(n), 1.0 - theta)) / (1.0 - zeta_2 / zeta_n_);
    half_pow_theta_ = std::pow(0.5, theta);
  }

  template <typename Generator>
  uint64_t operator()(Generator& generator) const {
    if (n_ < 2) return 0;
    const double u = absl::Uniform<double>(generator, 0.0, 1.0);
    const double uz = u * zeta_n_;
    if (uz < 1.0) return 0;
    if (uz < 1.0 + half_pow_theta_) return 1;
    const auto value =
        static_cast<uint64_t>(static_cast<double>(n_) * std::pow(eta_ * u - eta_ + 1.0, alpha_));
    return std::min(value, n_ - 1);
  }

 private:
  // Sum of 1/i^theta for i in [1, n]. Past a million terms the rest of the
  // sum is the integral plus the Euler-Maclaurin end correction, whose error
  // is far below what the generator can show, so a keyspace of 10^12 costs
  // no more to set up than one of 10^6.
  static double Zeta(uint64_t n, double theta) {
    constexpr uint64_t kExactTerms = 1'000'000;
    const uint64_t exact = std::min(n, kExactTerms);
    double sum = 0;
    for (uint64_t i = 1; i <= exact; ++i) sum += std::pow(static_cast<double>(i), -theta);
    if (n > exact) {
      const double m = static_cast<double>(exact), x = static_cast<double>(n);
      sum += (std::pow(x, 1.0 - theta) - std::pow(m, 1.0 - theta)) / (1.0 - theta);
      sum += (std::pow(x, -theta) - std::pow(m, -theta)) / 2.0;
    }
    return sum;
  }

  uint64_t n_;
  double zeta_n_;
  double alpha_;
  double eta_;
  double half_pow_theta_;
};

// Chooses key numbers in [0, keyspace). Copied into each thread, which then
// draws with its own generator.
class KeyChooser {
 public:
  explicit KeyChooser(const Config& config) : keyspace_(config.keyspace) {
    // One key needs no distribution (absl's zipf requires a range of two or more).
    if (config.keyspace < 2) return;
    if (config.zipf_theta > 1.0) {
      distribution_ = absl::zipf_distribution<uint64_t>(config.keyspace - 1, config.zipf_theta);
    } else if (config.zipf_theta > 0) {
      distribution_ = GrayZipfian(config.keyspace, config.zipf_theta);
    }
  }

  template <typename Generator>
  uint64_t Next(Generator& generator) {
    switch (distribution_.index()) {
      case 1:
        return std::get<1>(distribution_)(generator);
      case 2:
        return std::get<2>(distribution_)(generator);
      default:
        return absl::Uniform<uint64_t>(generator, 0, keyspace_);
    }
  }

 private:
  uint64_t keyspace_;
  std::variant<std::monostate, absl::zipf_distribution<uint64_t>, GrayZipfian> distribution_;
};

// ---- Request frames --------------------------------------------------------

// A request frame built once with FlatBuffers, then copied and patched in
// place (request_id, key digits) for every request, as redis-benchmark
// patches __rand_int__ into a prepared command: building each frame anew
// would cost the load tool more CPU than the server spends answering it, and
// the two share the machine.
struct RequestTemplate {
  std::string frame;  // length prefix included
  // None with --resp: Redis answers in order and a command carries no id.
  std::optional<size_t> request_id_offset;
  std::optional<size_t> key_digits_offset;  // where "key:%012d"'s digits start; none without -r

  void WriteTo(char* out, uint64_t request_id, uint64_t key_number) const {
    std::memcpy(out, frame.data(), frame.size());
    // FlatBuffers scalars are little-endian; the static_assert below keeps
    // this memcpy honest.
    if (request_id_offset.has_value()) {
      std::memcpy(out + *request_id_offset, &request_id, sizeof(request_id));
    }
    if (key_digits_offset.has_value()) {
      char* digits = out + *key_digits_offset;
      for (int i = kKeyDigits - 1; i >= 0; --i) {
        digits[i] = static_cast<char>('0' + key_number % 10);
        key_number /= 10;
      }
    }
  }
};
static_assert(std::endian::native == std::endian::little,
              "RequestTemplate writes FlatBuffers scalars with memcpy");

// Built with a nonzero request_id so FlatBuffers stores the field (a default
// value would be left out and there would be nothing to patch).
constexpr uint64_t kPlaceholderRequestId = ~uint64_t{0};
// The Hello's (-a): no request slot has it.
constexpr uint64_t kHelloRequestId = ~uint64_t{0} - 1;

std::string BuildHello(const Config& config) {
  if (config.auth.empty()) return "";
  flatbuffers::FlatBufferBuilder builder(256);
  auto token = builder.CreateString(config.auth);
  auto name = builder.CreateString("logkv-bench");
  auto hello = protocol::CreateHello(builder, protocol::kProtocolVersion, token, name);
  builder.FinishSizePrefixed(
      protocol::CreateRequest(builder, kHelloRequestId, protocol::Operation::Hello, hello.Union()));
  return std::string(protocol::FrameOf(builder));
}

// --resp: the command as redis-benchmark sends it (a RESP array of bulk
// strings), its key's digits patched like a frame's.
RequestTemplate BuildRespTemplate(Operation operation, const Config& config) {
  const std::string key = config.keyspace > 0 ? std::string("key:") + std::string(kKeyDigits, '0')
                                              : std::string("key:__rand_int__");
  RequestTemplate result;
  if (operation == Operation::kSet) {
    result.frame = absl::StrCat("*3\r\n$3\r\nSET\r\n$", key.size(), "\r\n");
  } else {
    result.frame = absl::StrCat("*2\r\n$3\r\nGET\r\n$", key.size(), "\r\n");
  }
  if (config.keyspace > 0) result.key_digits_offset = result.frame.size() + 4;
  absl::StrAppend(&result.frame, key, "\r\n");
  if (operation == Operation::kSet) {
    absl::StrAppend(&result.frame, "$", config.value_bytes, "\r\n",
                    std::string(static_cast<size_t>(config.value_bytes), 'x'), "\r\n");
  }
  return result;
}

absl::StatusOr<RequestTemplate> BuildTemplate(Operation operation, const Config& config) {
  if (config.resp) return BuildRespTemplate(operation, config);
  flatbuffers::FlatBufferBuilder builder(256 + static_cast<size_t>(config.value_bytes));
  const std::string key = config.keyspace > 0 ? std::string("key:") + std::string(kKeyDigits, '0')
                                              : std::string("key:__rand_int__");
  const auto key_vector =
      builder.CreateVector(reinterpret_cast<const uint8_t*>(key.data()), key.size());
  flatbuffers::Offset<void> body;
  protocol::Operation type;
  if (operation == Operation::kSet) {
    uint8_t* value_bytes = nullptr;
    const auto value_vector =
        builder.CreateUninitializedVector<uint8_t>(config.value_bytes, &value_bytes);
    if (config.value_bytes > 0) std::memset(value_bytes, 'x', config.value_bytes);
    body = protocol::CreatePut(builder, key_vector, value_vector, /*ttl_ms=*/0,
                               /*has_if_version=*/false, /*if_version=*/0, config.consistency)
               .Union();
    type = protocol::Operation::Put;
  } else {
    body = protocol::CreateGet(builder, key_vector, config.consistency).Union();
    type = protocol::Operation::Get;
  }
  builder.FinishSizePrefixed(protocol::CreateRequest(builder, kPlaceholderRequestId, type, body,
                                                     /*epoch=*/0, config.namespace_user));

  RequestTemplate result;
  result.frame = std::string(protocol::FrameOf(builder));
  const uint8_t* base = builder.GetBufferPointer();
  const protocol::Request* request = flatbuffers::GetSizePrefixedRoot<protocol::Request>(base);
  // Generated tables derive privately from flatbuffers::Table, whose layout
  // they share; GetAddressOf is the only way to the stored request_id.
  const uint8_t* request_id_address =
      reinterpret_cast<const flatbuffers::Table*>(request)->GetAddressOf(
          protocol::Request::VT_REQUEST_ID);
  if (request_id_address == nullptr) return absl::InternalError("request_id was not stored");
  result.request_id_offset = static_cast<size_t>(request_id_address - base);
  if (config.keyspace > 0) {
    const flatbuffers::Vector<uint8_t>* key_field = operation == Operation::kSet
                                                        ? request->operation_as_Put()->key()
                                                        : request->operation_as_Get()->key();
    result.key_digits_offset = static_cast<size_t>(key_field->data() - base) + 4;
  }

  // A wrong offset would send malformed frames at full speed, so one patched
  // copy is decoded the way the server will before any load is sent.
  constexpr uint64_t kCheckId = 0x0123'4567'89ab'cdef;
  const uint64_t check_key = config.keyspace > 0 ? config.keyspace - 1 : 0;
  std::vector<uint64_t> aligned((result.frame.size() + 7) / 8);
  char* copy = reinterpret_cast<char*>(aligned.data());
  result.WriteTo(copy, kCheckId, check_key);
  absl::StatusOr<const protocol::Request*> decoded =
      protocol::VerifyRequest(absl::string_view(copy, result.frame.size()), protocol::Limits{});
  if (!decoded.ok()) return decoded.status();
  const protocol::Request& check = **decoded;
  const absl::string_view check_key_text =
      protocol::View(operation == Operation::kSet ? check.operation_as_Put()->key()
                                                  : check.operation_as_Get()->key());
  const std::string expected_key =
      config.keyspace > 0 ? absl::StrFormat("key:%012d", check_key) : key;
  if (check.request_id() != kCheckId || check_key_text != expected_key) {
    return absl::InternalError("a patched request frame does not decode to what was written");
  }
  return result;
}

// ---- Load threads ----------------------------------------------------------

// What the threads of one test share: read-only during the test but for
// `issued`, which every connection adds to.
struct TestShared {
  const Config* config;
  Workload workload;
  const RequestTemplate* set_template;
  const RequestTemplate* get_template;
  const KeyChooser* keys;
  // The servers' resolved addresses, one per Config::endpoints entry.
  const std::vector<sockaddr_storage>* addresses;
  SSL_CTX* tls = nullptr;  // --tls
  std::string hello;       // -a: the Hello frame each connection sends first
  // Requests claimed so far across all connections (count mode only).
  alignas(64) std::atomic<int64_t> issued{0};
  // Set by the barrier once every thread has connected; read after it.
  Clock::time_point start;
};

class Worker;

// One connection to the server with up to -P requests in flight.
//
// Thread-safety: touched only from its worker's loop thread. Lifetime: owned
// by its Worker, freed only after the loop has run every close callback.
class Connection {
 public:
  // index: the connection's number across the test's threads, which picks
  // its server (round robin over --hosts).
  Connection(Worker* worker, const TestShared* shared, int index);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  void Connect(uv_loop_t* loop);
  // Fills the pipeline; called once every thread has connected.
  void Start();
  // --rate: sends what the rate allows now, after it held this connection back.
  void Resume();
  bool connected() const { return connected_; }

 private:
  struct Slot {
    uint64_t request_id = 0;
    Clock::time_point sent_at;
    Operation operation = Operation::kSet;
    bool in_flight = false;
  };

  static void OnConnect(uv_connect_t* request, int status);
  static void OnAlloc(uv_handle_t* handle, size_t suggested_bytes, uv_buf_t* buffer);
  static void OnRead(uv_stream_t* stream, ssize_t bytes_read, const uv_buf_t* buffer);
  static void OnWrite(uv_write_t* request, int status);
  static void OnClose(uv_handle_t* handle);

  // Claims and appends one request to pending_; false when the test is over.
  bool IssueOne();
  void FillPipeline();
  // Hands pending_ to the socket unless a write is still in progress.
  void Flush();
  // TLS: advances the handshake; true once it is done.
  bool ContinueHandshake();
  // TLS: hands the ciphertext waiting in the SSL's output to the socket.
  void WriteCiphertext();
  // Where the next plaintext read goes (the frame decoder, or with --resp
  // the RESP reader's input), and the hand-over of what was read there.
  char* PlainSpace(size_t* available);
  bool CommitPlain(size_t bytes);  // false: the connection failed
  // Takes every whole answer read so far; false: the connection failed and
  // is closing.
  bool HandleAnswers(Clock::time_point now);
  bool HandleFrame(absl::string_view frame, Clock::time_point now);
  bool HandleReply(const redisReply& reply, Clock::time_point now);
  // Counts an answer to the request in `slot_index`.
  void Answered(uint32_t slot_index, Clock::time_point now);
  void Fail(absl::string_view why);
  void Close();
  void CloseIfDone();

  Worker* const worker_;
  const TestShared* const shared_;
  const size_t frame_capacity_bytes_;  // room for one frame of either kind

  uv_tcp_t tcp_;
  uv_connect_t connect_request_;
  uv_write_t write_request_;
  protocol::FrameDecoder decoder_;

  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  // Frames not yet handed to the socket, and the slots they belong to (their
  // clocks start when they are written). Together with writing_ they never
  // hold more than -P frames, so neither ever grows after construction.
  std::vector<char> pending_;
  size_t pending_bytes_ = 0;
  std::vector<uint32_t> pending_slots_;
  std::vector<char> writing_;  // the bytes of the uv_write in progress
  // --tls: the connection's SSL (its BIO reads cipher_in_ in place and
  // writes into tls_buffers_.out), the ciphertext read, and the ciphertext
  // not yet handed to the socket.
  SSL* ssl_ = nullptr;
  bool handshake_done_ = false;
  protocol::TlsBioBuffers tls_buffers_;
  std::vector<char> cipher_in_;
  std::string cipher_out_;
  std::string cipher_writing_;
  // --resp: the replies' parser, what a read brought for it, and the slots
  // in the order their commands were sent (Redis answers in that order).
  redisReader* resp_reader_ = nullptr;
  std::vector<char> resp_in_;
  std::vector<uint32_t> resp_order_;
  size_t resp_head_ = 0;
  size_t resp_count_ = 0;

  // Which of Config::endpoints this connection talks to.
  size_t endpoint_ = 0;
  uint64_t next_serial_ = 0;
  uint64_t mixed_position_ = 0;
  int in_flight_ = 0;
  bool connected_ = false;
  bool write_in_progress_ = false;
  bool closing_ = false;
};

// A thread with its own libuv loop, its share of the connections, and its own
// histogram and counters, merged by the main thread after it ends.
//
// Thread-safety: everything but completed_ is touched only by the worker's
// thread until Run returns; completed_ is read by the main thread for progress.
class Worker {
 public:
  // Connections first_connection .. first_connection + connection_count - 1.
  Worker(TestShared* shared, int first_connection, int connection_count)
      : shared_(shared), keys_(*shared->keys) {
    connections_.reserve(connection_count);
    for (int i = 0; i < connection_count; ++i) {
      connections_.push_back(std::make_unique<Connection>(this, shared, first_connection + i));
    }
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  template <typename Barrier>
  void Run(Barrier* all_connected) {
    if (const int rc = uv_loop_init(&loop_); rc != 0) {
      connect_failures_ = static_cast<int>(connections_.size());
      RecordError(absl::StrCat("uv_loop_init: ", uv_strerror(rc)));
      all_connected->arrive_and_wait();
      return;
    }
    open_connections_ = static_cast<int>(connections_.size());
    connect_pending_ = open_connections_;
    for (auto& connection : connections_) connection->Connect(&loop_);
    // Runs until every connect has succeeded or failed (OnConnectDone stops it).
    if (connect_pending_ > 0) uv_run(&loop_, UV_RUN_DEFAULT);
    all_connected->arrive_and_wait();

    const TestShared& shared = *shared_;
    if (shared.config->duration > absl::ZeroDuration() && open_connections_ > 0) {
      uv_timer_init(&loop_, &deadline_timer_);
      deadline_timer_.data = this;
      const auto deadline = shared.start + absl::ToChronoNanoseconds(shared.config->duration);
      const auto remaining = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
      uv_timer_start(&deadline_timer_, OnDeadline, std::max<int64_t>(0, remaining.count()), 0);
      deadline_timer_open_ = true;
    }
    if (shared.config->rate > 0 && open_connections_ > 0) {
      // This worker's share of the rate, by its share of the connections.
      rate_per_second_ = static_cast<double>(shared.config->rate) *
                         static_cast<double>(connections_.size()) /
                         static_cast<double>(shared.config->clients);
      uv_timer_init(&loop_, &rate_timer_);
      rate_timer_.data = this;
      uv_timer_start(&rate_timer_, OnRateTimer, 1, 1);
      rate_timer_open_ = true;
    }
    for (auto& connection : connections_) {
      if (connection->connected()) connection->Start();
    }
    uv_run(&loop_, UV_RUN_DEFAULT);
    const int rc = uv_loop_close(&loop_);
    if (rc != 0) RecordError(absl::StrCat("uv_loop_close: ", uv_strerror(rc)));
  }

  // --rate: whether this worker may send one more request now (its share of
  // the rate, counted from the test's start); when not, the connection is
  // filled again by the rate timer.
  bool RateAllows(Connection* connection) {
    if (rate_per_second_ <= 0) return true;
    const double elapsed =
        std::chrono::duration<double>(Clock::now() - shared_->start).count();
    const double allowed = elapsed * rate_per_second_ + 1;  // one request of credit at the start
    // What a stalled server left unsent is not sent in a burst after it: at
    // most a millisecond's worth (or one request) of credit is kept.
    const double max_credit = std::max(1.0, rate_per_second_ / 1000);
    if (allowed - static_cast<double>(rate_sent_) > max_credit) {
      rate_sent_ = static_cast<uint64_t>(allowed - max_credit);
    }
    if (static_cast<double>(rate_sent_) < allowed) {
      ++rate_sent_;
      return true;
    }
    if (std::find(throttled_.begin(), throttled_.end(), connection) == throttled_.end()) {
      throttled_.push_back(connection);
    }
    return false;
  }

  bool Throttled(const Connection* connection) const {
    return std::find(throttled_.begin(), throttled_.end(), connection) != throttled_.end();
  }

  // True while the test wants more requests; claims one in count mode.
  bool ClaimRequest() {
    if (stopping_) return false;
    if (shared_->config->duration > absl::ZeroDuration()) return true;
    return shared_->issued.fetch_add(1, std::memory_order_relaxed) < shared_->config->requests;
  }

  uint64_t NextKey() { return keys_.Next(generator_); }

  void RecordAnswer(uint64_t latency_ns, Clock::time_point now) {
    histogram_.Record(latency_ns);
    last_answer_at_ = now;
    completed_.store(completed_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  void RecordMiss() { ++misses_; }
  void RecordError(absl::string_view why) {
    ++errors_;
    if (first_error_.empty()) first_error_ = std::string(why);
  }
  // Requests lost with a failed connection count as errors, once.
  void RecordLost(int count) { errors_ += count; }
  void RecordConnectFailure(absl::string_view why) {
    ++connect_failures_;
    RecordError(why);
  }

  // from_callback: false when uv_tcp_connect failed at once, before the loop
  // runs; stopping the loop then would make its first run return at once.
  void OnConnectDone(bool from_callback) {
    if (--connect_pending_ == 0 && from_callback) uv_stop(&loop_);
  }
  void OnConnectionClosed(Connection* connection) {
    std::erase(throttled_, connection);
    if (--open_connections_ > 0) return;
    if (deadline_timer_open_) CloseDeadlineTimer();
    if (rate_timer_open_) {
      rate_timer_open_ = false;
      uv_close(reinterpret_cast<uv_handle_t*>(&rate_timer_), nullptr);
    }
  }

  uint64_t completed() const { return completed_.load(std::memory_order_relaxed); }
  uint64_t errors() const { return errors_; }
  uint64_t misses() const { return misses_; }
  int connect_failures() const { return connect_failures_; }
  const std::string& first_error() const { return first_error_; }
  const LatencyHistogram& histogram() const { return histogram_; }
  std::optional<Clock::time_point> last_answer_at() const { return last_answer_at_; }

 private:
  // Every millisecond under --rate: the connections the rate held back send
  // what it allows now.
  static void OnRateTimer(uv_timer_t* timer);

  static void OnDeadline(uv_timer_t* timer) {
    auto* self = static_cast<Worker*>(timer->data);
    // Connections stop issuing and close once their in-flight answers are in.
    self->stopping_ = true;
    self->CloseDeadlineTimer();
  }
  void CloseDeadlineTimer() {
    deadline_timer_open_ = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&deadline_timer_), nullptr);
  }

  TestShared* const shared_;
  KeyChooser keys_;
  absl::InsecureBitGen generator_;
  uv_loop_t loop_;
  uv_timer_t deadline_timer_;
  bool deadline_timer_open_ = false;
  uv_timer_t rate_timer_;
  bool rate_timer_open_ = false;
  double rate_per_second_ = 0;  // --rate: this worker's share; 0: none
  uint64_t rate_sent_ = 0;
  std::vector<Connection*> throttled_;  // held back by the rate, to fill again
  bool stopping_ = false;
  int connect_pending_ = 0;
  int open_connections_ = 0;
  std::vector<std::unique_ptr<Connection>> connections_;

  LatencyHistogram histogram_;
  std::atomic<uint64_t> completed_{0};
  uint64_t errors_ = 0;
  uint64_t misses_ = 0;
  int connect_failures_ = 0;
  std::string first_error_;
  std::optional<Clock::time_point> last_answer_at_;
};

Connection::Connection(Worker* worker, const TestShared* shared, int index)
    : worker_(worker),
      shared_(shared),
      frame_capacity_bytes_(
          std::max(shared->set_template->frame.size(), shared->get_template->frame.size())),
      decoder_(protocol::Limits{}.max_frame_bytes) {
  endpoint_ = static_cast<size_t>(index) % shared->addresses->size();
  const int pipeline = shared->config->pipeline;
  slots_.resize(pipeline);
  free_slots_.reserve(pipeline);
  for (int i = pipeline - 1; i >= 0; --i) free_slots_.push_back(static_cast<uint32_t>(i));
  pending_.resize(frame_capacity_bytes_ * pipeline + shared->hello.size());
  writing_.resize(frame_capacity_bytes_ * pipeline + shared->hello.size());
  pending_slots_.reserve(pipeline);
  if (shared->config->resp) {
    resp_reader_ = redisReaderCreate();
    resp_in_.resize(kReadChunkBytes);
    resp_order_.resize(pipeline);
  }
  tcp_.data = this;
  connect_request_.data = this;
  write_request_.data = this;
}

Connection::~Connection() {
  if (resp_reader_ != nullptr) redisReaderFree(resp_reader_);
}

void Connection::Connect(uv_loop_t* loop) {
  if (const int rc = uv_tcp_init(loop, &tcp_); rc != 0) {
    // The handle does not exist, so there is nothing to close.
    closing_ = true;
    worker_->RecordConnectFailure(absl::StrCat("uv_tcp_init: ", uv_strerror(rc)));
    worker_->OnConnectionClosed(this);
    worker_->OnConnectDone(/*from_callback=*/false);
    return;
  }
  const int rc = uv_tcp_connect(
      &connect_request_, &tcp_,
      reinterpret_cast<const sockaddr*>(&(*shared_->addresses)[endpoint_]), OnConnect);
  if (rc != 0) {
    // No callback will come: account for the attempt here.
    worker_->RecordConnectFailure(absl::StrCat("connect: ", uv_strerror(rc)));
    Close();
    worker_->OnConnectDone(/*from_callback=*/false);
  }
}

void Connection::OnConnect(uv_connect_t* request, int status) {
  auto* self = static_cast<Connection*>(request->data);
  const Endpoint& endpoint = self->shared_->config->endpoints[self->endpoint_];
  if (status != 0) {
    self->worker_->RecordConnectFailure(
        absl::StrCat("could not connect to ",
                     absl::StrContains(endpoint.host, ':') ? absl::StrCat("[", endpoint.host, "]")
                                                           : endpoint.host,
                     ":", endpoint.port, ": ", uv_strerror(status)));
    self->Close();
  } else {
    // Small frames written while earlier ones are unacknowledged would
    // otherwise wait for Nagle's timer.
    uv_tcp_nodelay(&self->tcp_, 1);
    const int rc = uv_read_start(reinterpret_cast<uv_stream_t*>(&self->tcp_), OnAlloc, OnRead);
    if (rc != 0) {
      self->worker_->RecordConnectFailure(absl::StrCat("uv_read_start: ", uv_strerror(rc)));
      self->Close();
    } else if (self->shared_->tls != nullptr) {
      // Connected once the handshake is done (OnRead).
      const Config& config = *self->shared_->config;
      self->ssl_ = SSL_new(self->shared_->tls);
      protocol::AttachTlsBio(self->ssl_, &self->tls_buffers_);
      SSL_set_connect_state(self->ssl_);
      static const unsigned char kAlpn[] = "\x05logkv";
      if (!config.resp) SSL_set_alpn_protos(self->ssl_, kAlpn, sizeof(kAlpn) - 1);
      const std::string& name = config.sni.empty() ? endpoint.host : config.sni;
      unsigned char ip[16];
      if (inet_pton(AF_INET, name.c_str(), ip) == 1 || inet_pton(AF_INET6, name.c_str(), ip) == 1) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(self->ssl_), name.c_str());
      } else {
        SSL_set_tlsext_host_name(self->ssl_, name.c_str());
        SSL_set1_host(self->ssl_, name.c_str());
      }
      self->cipher_in_.resize(kReadChunkBytes);
      self->ContinueHandshake();
      return;
    } else {
      self->connected_ = true;
    }
  }
  self->worker_->OnConnectDone(/*from_callback=*/true);
}

bool Connection::ContinueHandshake() {
  ERR_clear_error();
  const int rc = SSL_do_handshake(ssl_);
  WriteCiphertext();
  if (rc == 1) {
    handshake_done_ = true;
    connected_ = true;
    worker_->OnConnectDone(/*from_callback=*/true);
    return true;
  }
  const int error = SSL_get_error(ssl_, rc);
  if (error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE) {
    char reason[256] = "the server closed the connection";
    if (unsigned long code = ERR_get_error()) ERR_error_string_n(code, reason, sizeof(reason));
    const long verify = SSL_get_verify_result(ssl_);
    worker_->RecordConnectFailure(absl::StrCat(
        "TLS handshake failed: ", reason,
        verify != X509_V_OK ? absl::StrCat(" (", X509_verify_cert_error_string(verify), ")")
                            : std::string()));
    Close();
    worker_->OnConnectDone(/*from_callback=*/true);
  }
  return false;
}

void Connection::WriteCiphertext() {
  if (!tls_buffers_.out.empty()) {
    if (cipher_out_.empty()) {
      cipher_out_.swap(tls_buffers_.out);
    } else {
      cipher_out_.append(tls_buffers_.out);
      tls_buffers_.out.clear();
    }
  }
  if (write_in_progress_ || cipher_out_.empty() || closing_) return;
  cipher_writing_.swap(cipher_out_);
  cipher_out_.clear();
  uv_buf_t buffer =
      uv_buf_init(cipher_writing_.data(), static_cast<unsigned int>(cipher_writing_.size()));
  const int rc =
      uv_write(&write_request_, reinterpret_cast<uv_stream_t*>(&tcp_), &buffer, 1, OnWrite);
  if (rc != 0) {
    Fail(absl::StrCat("uv_write: ", uv_strerror(rc)));
    return;
  }
  write_in_progress_ = true;
}

void Connection::Start() {
  // -a: the Hello goes first; the server answers in order, so the requests
  // behind it are authenticated.
  if (!shared_->hello.empty()) {
    std::memcpy(pending_.data() + pending_bytes_, shared_->hello.data(), shared_->hello.size());
    pending_bytes_ += shared_->hello.size();
  }
  FillPipeline();
  CloseIfDone();
}

void Connection::Resume() {
  if (closing_) return;
  FillPipeline();
  CloseIfDone();
}

void Worker::OnRateTimer(uv_timer_t* timer) {
  auto* self = static_cast<Worker*>(timer->data);
  std::vector<Connection*> held;
  held.swap(self->throttled_);
  for (Connection* connection : held) connection->Resume();
}

bool Connection::IssueOne() {
  if (free_slots_.empty() || !worker_->RateAllows(this) || !worker_->ClaimRequest()) return false;
  const uint32_t slot_index = free_slots_.back();
  free_slots_.pop_back();

  Operation operation = Operation::kSet;
  switch (shared_->workload) {
    case Workload::kSet:
      break;
    case Workload::kGet:
      operation = Operation::kGet;
      break;
    case Workload::kMixed: {
      const Config& config = *shared_->config;
      const uint64_t period = static_cast<uint64_t>(config.ratio_set + config.ratio_get);
      if (mixed_position_++ % period >= static_cast<uint64_t>(config.ratio_set)) {
        operation = Operation::kGet;
      }
      break;
    }
  }
  const RequestTemplate& request_template =
      operation == Operation::kSet ? *shared_->set_template : *shared_->get_template;
  const uint64_t request_id = (++next_serial_ << kSlotBits) | slot_index;
  const uint64_t key = shared_->config->keyspace > 0 ? worker_->NextKey() : 0;
  request_template.WriteTo(pending_.data() + pending_bytes_, request_id, key);
  pending_bytes_ += request_template.frame.size();
  pending_slots_.push_back(slot_index);
  if (resp_reader_ != nullptr) {
    resp_order_[(resp_head_ + resp_count_++) % resp_order_.size()] = slot_index;
  }

  Slot& slot = slots_[slot_index];
  slot.request_id = request_id;
  slot.operation = operation;
  slot.in_flight = true;
  ++in_flight_;
  return true;
}

void Connection::FillPipeline() {
  while (in_flight_ < shared_->config->pipeline && IssueOne()) {
  }
  Flush();
}

void Connection::Flush() {
  if (ssl_ != nullptr) {
    if (closing_) return;
    if (pending_bytes_ > 0 && !write_in_progress_) {
      const Clock::time_point now = Clock::now();
      for (uint32_t slot_index : pending_slots_) slots_[slot_index].sent_at = now;
      pending_slots_.clear();
      // No ERR_clear_error before SSL_write and SSL_read: each costs as much
      // as a small record's cipher, and an error ends the connection.
      if (SSL_write(ssl_, pending_.data(), static_cast<int>(pending_bytes_)) <= 0) {
        Fail("TLS: SSL_write failed");
        return;
      }
      pending_bytes_ = 0;
    }
    WriteCiphertext();
    return;
  }
  if (write_in_progress_ || pending_bytes_ == 0 || closing_) return;
  const Clock::time_point now = Clock::now();
  for (uint32_t slot_index : pending_slots_) slots_[slot_index].sent_at = now;
  pending_slots_.clear();
  std::swap(pending_, writing_);
  // One uv_write carries every frame issued since the last one.
  uv_buf_t buffer = uv_buf_init(writing_.data(), static_cast<unsigned int>(pending_bytes_));
  pending_bytes_ = 0;
  const int rc =
      uv_write(&write_request_, reinterpret_cast<uv_stream_t*>(&tcp_), &buffer, 1, OnWrite);
  if (rc != 0) {
    Fail(absl::StrCat("uv_write: ", uv_strerror(rc)));
    return;
  }
  write_in_progress_ = true;
}

void Connection::OnWrite(uv_write_t* request, int status) {
  auto* self = static_cast<Connection*>(request->data);
  self->write_in_progress_ = false;
  if (self->closing_) return;  // includes UV_ECANCELED from our own close
  if (status != 0) {
    self->Fail(absl::StrCat("write: ", uv_strerror(status)));
    return;
  }
  self->Flush();
}

void Connection::OnAlloc(uv_handle_t* handle, size_t /*suggested_bytes*/, uv_buf_t* buffer) {
  auto* self = static_cast<Connection*>(handle->data);
  if (self->ssl_ != nullptr) {
    *buffer = uv_buf_init(self->cipher_in_.data(), static_cast<unsigned int>(kReadChunkBytes));
    return;
  }
  size_t available = 0;
  char* space = self->PlainSpace(&available);
  *buffer = uv_buf_init(space, static_cast<unsigned int>(std::min<size_t>(available, 1u << 30)));
}

char* Connection::PlainSpace(size_t* available) {
  if (resp_reader_ != nullptr) {
    *available = resp_in_.size();
    return resp_in_.data();
  }
  return decoder_.WritableSpace(kReadChunkBytes, available);
}

bool Connection::CommitPlain(size_t bytes) {
  if (resp_reader_ == nullptr) {
    decoder_.Commit(bytes);
    return true;
  }
  if (redisReaderFeed(resp_reader_, resp_in_.data(), bytes) != REDIS_OK) {
    Fail("RESP: the reader took no more input");
    return false;
  }
  return true;
}

void Connection::OnRead(uv_stream_t* stream, ssize_t bytes_read, const uv_buf_t* /*buffer*/) {
  auto* self = static_cast<Connection*>(stream->data);
  if (self->closing_) return;
  if (bytes_read < 0 && self->ssl_ != nullptr && !self->handshake_done_) {
    self->worker_->RecordConnectFailure(
        "TLS: the server closed the connection during the handshake (is its port TLS?)");
    self->Close();
    self->worker_->OnConnectDone(/*from_callback=*/true);
    return;
  }
  if (bytes_read < 0) {
    self->Fail(bytes_read == UV_EOF
                   ? std::string("the server closed the connection")
                   : absl::StrCat("read: ", uv_strerror(static_cast<int>(bytes_read))));
    return;
  }
  if (bytes_read == 0) return;
  if (self->ssl_ != nullptr) {
    self->tls_buffers_.Feed(self->cipher_in_.data(), static_cast<size_t>(bytes_read));
    if (!self->handshake_done_) {
      self->ContinueHandshake();
      self->tls_buffers_.KeepUnread();
      if (!self->handshake_done_ ||
          (SSL_has_pending(self->ssl_) == 0 && self->tls_buffers_.unread() == 0)) {
        return;
      }
      // The first records arrived with the end of the handshake.
    }
    while (true) {
      size_t available = 0;
      char* space = self->PlainSpace(&available);
      const int got = SSL_read(self->ssl_, space, static_cast<int>(std::min<size_t>(available, 1u << 30)));
      if (got > 0) {
        if (!self->CommitPlain(static_cast<size_t>(got))) return;
        // Another SSL_read would only say it wants more: skip it.
        // (SSL_has_pending: read-ahead may hold whole records not yet decrypted.)
        if (SSL_has_pending(self->ssl_) == 0 && self->tls_buffers_.unread() == 0) break;
        continue;
      }
      const int error = SSL_get_error(self->ssl_, got);
      if (error == SSL_ERROR_WANT_READ) break;
      char reason[256] = "the server closed the connection";
      if (unsigned long code = ERR_get_error()) ERR_error_string_n(code, reason, sizeof(reason));
      self->Fail(absl::StrCat("TLS: ", reason));
      return;
    }
    self->tls_buffers_.KeepUnread();
  } else if (!self->CommitPlain(static_cast<size_t>(bytes_read))) {
    return;
  }
  // Every answer in this read arrived together; one clock reading serves all.
  if (!self->HandleAnswers(Clock::now())) return;
  // Like redis-benchmark -P: a connection sends P requests, waits for all P
  // answers, then sends the next P, so the two tools' figures compare.
  if (self->in_flight_ == 0) self->FillPipeline();
  self->CloseIfDone();
}

bool Connection::HandleAnswers(Clock::time_point now) {
  if (resp_reader_ != nullptr) {
    while (true) {
      void* reply = nullptr;
      if (redisReaderGetReply(resp_reader_, &reply) != REDIS_OK) {
        Fail(absl::StrCat("bad reply from the server: ", resp_reader_->errstr));
        return false;
      }
      if (reply == nullptr) return true;
      const bool ok = HandleReply(*static_cast<const redisReply*>(reply), now);
      freeReplyObject(reply);
      if (!ok) return false;
    }
  }
  while (true) {
    absl::StatusOr<std::optional<absl::string_view>> frame = decoder_.Next();
    if (!frame.ok()) {
      Fail(absl::StrCat("bad frame from the server: ", frame.status().ToString()));
      return false;
    }
    if (!frame->has_value()) return true;
    if (!HandleFrame(**frame, now)) return false;
  }
}

bool Connection::HandleReply(const redisReply& reply, Clock::time_point now) {
  if (resp_count_ == 0) {
    // Redis refuses a connection this way (max clients, protected mode)
    // before any command: say what it said.
    const absl::string_view said =
        reply.str != nullptr ? absl::string_view(reply.str, reply.len) : absl::string_view();
    Fail(absl::StrCat("a reply came with no command waiting for one: ", said));
    return false;
  }
  const uint32_t slot_index = resp_order_[resp_head_];
  resp_head_ = (resp_head_ + 1) % resp_order_.size();
  --resp_count_;
  const bool is_get = slots_[slot_index].operation == Operation::kGet;
  Answered(slot_index, now);
  const absl::string_view text(reply.str != nullptr ? reply.str : "", reply.len);
  if (reply.type == REDIS_REPLY_ERROR) {
    worker_->RecordError(absl::StrCat(is_get ? "GET" : "SET", " answered ", text));
  } else if (is_get && reply.type == REDIS_REPLY_NIL) {
    worker_->RecordMiss();
  } else if (is_get ? reply.type != REDIS_REPLY_STRING
                    : reply.type != REDIS_REPLY_STATUS || text != "OK") {
    worker_->RecordError(absl::StrCat(is_get ? "GET" : "SET", " answered a reply of type ",
                                      reply.type, " (", text, ")"));
  }
  return true;
}

void Connection::Answered(uint32_t slot_index, Clock::time_point now) {
  Slot& slot = slots_[slot_index];
  slot.in_flight = false;
  free_slots_.push_back(slot_index);
  --in_flight_;
  const auto latency = std::chrono::duration_cast<std::chrono::nanoseconds>(now - slot.sent_at);
  worker_->RecordAnswer(static_cast<uint64_t>(std::max<int64_t>(0, latency.count())), now);
}

bool Connection::HandleFrame(absl::string_view frame, Clock::time_point now) {
  absl::StatusOr<const protocol::Response*> decoded =
      protocol::VerifyResponse(frame, protocol::Limits{}.max_frame_bytes);
  if (!decoded.ok()) {
    Fail(absl::StrCat("bad answer from the server: ", decoded.status().ToString()));
    return false;
  }
  const protocol::Response& response = **decoded;
  const uint64_t request_id = response.request_id();
  if (request_id == kHelloRequestId) {
    if (response.status() != protocol::StatusCode::Ok) {
      Fail(absl::StrCat("Hello refused: ", protocol::EnumNameStatusCode(response.status()), ": ",
                        protocol::View(response.message())));
      return false;
    }
    return true;
  }
  const uint64_t slot_index = request_id & kSlotMask;
  if (slot_index >= slots_.size() || !slots_[slot_index].in_flight ||
      slots_[slot_index].request_id != request_id) {
    Fail(absl::StrCat("answer with request_id ", request_id, " matches no request in flight"));
    return false;
  }
  const bool is_get = slots_[slot_index].operation == Operation::kGet;
  Answered(static_cast<uint32_t>(slot_index), now);

  switch (response.status()) {
    case protocol::StatusCode::Ok:
      if (is_get && response.result_type() != protocol::Result::ValueResult) {
        worker_->RecordError("GET answered Ok without a ValueResult");
      }
      break;
    case protocol::StatusCode::NotFound:
      if (is_get) {
        worker_->RecordMiss();
        break;
      }
      [[fallthrough]];
    default:
      worker_->RecordError(absl::StrCat(is_get ? "GET" : "SET", " answered ",
                                        protocol::EnumNameStatusCode(response.status()), ": ",
                                        protocol::View(response.message())));
      break;
  }
  return true;
}

void Connection::Fail(absl::string_view why) {
  if (closing_) return;
  worker_->RecordError(why);
  // The answers still owed will never come; count them, minus the one
  // already counted by RecordError when there are any.
  if (in_flight_ > 1) worker_->RecordLost(in_flight_ - 1);
  in_flight_ = 0;
  Close();
}

void Connection::CloseIfDone() {
  if (!closing_ && in_flight_ == 0 && !worker_->Throttled(this)) Close();
}

void Connection::Close() {
  if (closing_) return;
  closing_ = true;
  connected_ = false;
  // uv_close stops reading and cancels a write still queued; the frames it
  // carried have all been answered by now (or the connection failed).
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), OnClose);
}

void Connection::OnClose(uv_handle_t* handle) {
  auto* self = static_cast<Connection*>(handle->data);
  if (self->ssl_ != nullptr) {
    SSL_free(self->ssl_);
    self->ssl_ = nullptr;
  }
  self->worker_->OnConnectionClosed(self);
}

// ---- Running a test and reporting ---------------------------------------

struct TestResult {
  Workload workload;
  uint64_t completed = 0;
  uint64_t errors = 0;
  uint64_t misses = 0;
  int connect_failures = 0;
  std::string first_error;
  double elapsed_seconds = 0;
  LatencyHistogram histogram;

  double requests_per_second() const {
    return elapsed_seconds > 0 ? static_cast<double>(completed) / elapsed_seconds : 0.0;
  }
};

double Milliseconds(uint64_t nanoseconds) { return static_cast<double>(nanoseconds) / 1e6; }

void PrintProgress(const Config& config, Workload workload, uint64_t done, double elapsed_seconds,
                   double current_rps, bool terminal) {
  const double overall_rps = elapsed_seconds > 0 ? static_cast<double>(done) / elapsed_seconds : 0;
  std::string line;
  if (config.duration > absl::ZeroDuration()) {
    line = absl::StrFormat("%s: %d done, %.0f/%.0f s, rps=%.1f (overall: %.1f)",
                           WorkloadName(workload), done, elapsed_seconds,
                           absl::ToDoubleSeconds(config.duration), current_rps, overall_rps);
  } else {
    line = absl::StrFormat("%s: %d/%d done, rps=%.1f (overall: %.1f)", WorkloadName(workload), done,
                           config.requests, current_rps, overall_rps);
  }
  // On a terminal the line rewrites itself, as redis-benchmark's does; in a
  // log each second gets its own line.
  // Two calls, not one with a chosen format: with clang, absl::FPrintF takes
  // only a constant format string (it checks it at compile time).
  if (terminal) {
    absl::FPrintF(stderr, "\r%-78s", line);
  } else {
    absl::FPrintF(stderr, "%s\n", line);
  }
  fflush(stderr);
}

std::unique_ptr<TestResult> RunTest(const Config& config, Workload workload,
                                    const RequestTemplate& set_template,
                                    const RequestTemplate& get_template, const KeyChooser& keys,
                                    const std::vector<sockaddr_storage>& addresses,
                                    SSL_CTX* tls) {
  TestShared shared;
  shared.config = &config;
  shared.workload = workload;
  shared.set_template = &set_template;
  shared.get_template = &get_template;
  shared.hello = BuildHello(config);
  shared.keys = &keys;
  shared.addresses = &addresses;
  shared.tls = tls;

  std::vector<std::unique_ptr<Worker>> workers;
  int first_connection = 0;
  for (int i = 0; i < config.threads; ++i) {
    const int connections = config.clients / config.threads + (i < config.clients % config.threads);
    workers.push_back(std::make_unique<Worker>(&shared, first_connection, connections));
    first_connection += connections;
  }

  absl::Notification started;
  auto on_all_connected = [&shared, &started]() noexcept {
    shared.start = Clock::now();
    started.Notify();
  };
  std::barrier all_connected(config.threads, on_all_connected);
  std::atomic<int> running{config.threads};
  absl::Notification finished;
  std::vector<std::thread> threads;
  for (auto& worker : workers) {
    threads.emplace_back([&, worker = worker.get()] {
      worker->Run(&all_connected);
      if (running.fetch_sub(1) == 1) finished.Notify();
    });
  }

  const bool show_progress = !config.quiet && !config.csv;
  const bool terminal = isatty(STDERR_FILENO) == 1;
  bool progress_shown = false;
  started.WaitForNotification();
  uint64_t previous_done = 0;
  Clock::time_point previous_at = shared.start;
  while (!finished.WaitForNotificationWithTimeout(absl::Seconds(1))) {
    if (!show_progress) continue;
    uint64_t done = 0;
    for (const auto& worker : workers) done += worker->completed();
    const Clock::time_point now = Clock::now();
    const double interval = std::chrono::duration<double>(now - previous_at).count();
    PrintProgress(config, workload, done, std::chrono::duration<double>(now - shared.start).count(),
                  interval > 0 ? static_cast<double>(done - previous_done) / interval : 0,
                  terminal);
    progress_shown = true;
    previous_done = done;
    previous_at = now;
  }
  for (auto& thread : threads) thread.join();
  if (progress_shown && terminal) absl::FPrintF(stderr, "\r%78s\r", "");

  auto result = std::make_unique<TestResult>();
  result->workload = workload;
  Clock::time_point end = shared.start;
  for (const auto& worker : workers) {
    result->completed += worker->completed();
    result->errors += worker->errors();
    result->misses += worker->misses();
    result->connect_failures += worker->connect_failures();
    if (result->first_error.empty()) result->first_error = worker->first_error();
    result->histogram.Merge(worker->histogram());
    if (worker->last_answer_at().has_value()) end = std::max(end, *worker->last_answer_at());
  }
  result->elapsed_seconds = std::chrono::duration<double>(end - shared.start).count();
  return result;
}

std::string KeyspaceDescription(const Config& config) {
  if (config.keyspace == 0) return "one key (no -r)";
  if (config.zipf_theta > 0) {
    return absl::StrFormat("%d keys, zipf theta %g", config.keyspace, config.zipf_theta);
  }
  return absl::StrFormat("%d keys, uniform", config.keyspace);
}

void PrintHuman(const Config& config, const TestResult& result) {
  const LatencyHistogram& h = result.histogram;
  absl::PrintF("====== %s ======\n", WorkloadName(result.workload));
  absl::PrintF("  %d requests completed in %.2f seconds\n", result.completed,
               result.elapsed_seconds);
  absl::PrintF("  %d parallel clients, %d thread%s\n", config.clients, config.threads,
               config.threads == 1 ? "" : "s");
  absl::PrintF("  %d bytes payload, pipeline %d\n", config.value_bytes, config.pipeline);
  if (result.workload == Workload::kMixed) {
    absl::PrintF("  ratio SET:GET %d:%d\n", config.ratio_set, config.ratio_get);
  }
  absl::PrintF("  keyspace: %s\n", KeyspaceDescription(config));
  if (config.resp) absl::PrintF("  protocol: RESP (redis-server)\n");
  if (!config.fsync_mode.empty()) absl::PrintF("  fsync mode: %s\n", config.fsync_mode);
  if (config.consistency != protocol::Consistency::Default) {
    absl::PrintF("  consistency: %s\n", protocol::EnumNameConsistency(config.consistency));
  }
  absl::PrintF("  errors: %d", result.errors);
  if (result.workload != Workload::kSet) absl::PrintF(", get misses: %d", result.misses);
  absl::PrintF("\n\n");
  absl::PrintF("Summary:\n");
  absl::PrintF("  throughput summary: %.2f requests per second\n", result.requests_per_second());
  absl::PrintF("  latency summary (msec):\n");
  absl::PrintF("  %9s %9s %9s %9s %9s %9s %9s\n", "avg", "min", "p50", "p95", "p99", "p99.9",
               "max");
  absl::PrintF("  %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f\n\n", h.mean() / 1e6,
               Milliseconds(h.min()), Milliseconds(h.ValueAtPercentile(50)),
               Milliseconds(h.ValueAtPercentile(95)), Milliseconds(h.ValueAtPercentile(99)),
               Milliseconds(h.ValueAtPercentile(99.9)), Milliseconds(h.max()));
}

void PrintQuiet(const TestResult& result) {
  absl::PrintF("%s: %.2f requests per second, p50=%.3f msec\n", WorkloadName(result.workload),
               result.requests_per_second(), Milliseconds(result.histogram.ValueAtPercentile(50)));
}

void PrintCsvHeader(const Config& config) {
  absl::PrintF(
      "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\","
      "\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"%s%s\n",
      config.fsync_mode.empty() ? "" : ",\"fsync_mode\"",
      config.csv_p999 ? ",\"p999_latency_ms\"" : "");
}

void PrintCsv(const Config& config, const TestResult& result) {
  const LatencyHistogram& h = result.histogram;
  absl::PrintF("\"%s\",\"%.2f\",\"%.3f\",\"%.3f\",\"%.3f\",\"%.3f\",\"%.3f\",\"%.3f\"",
               WorkloadName(result.workload), result.requests_per_second(), h.mean() / 1e6,
               Milliseconds(h.min()), Milliseconds(h.ValueAtPercentile(50)),
               Milliseconds(h.ValueAtPercentile(95)), Milliseconds(h.ValueAtPercentile(99)),
               Milliseconds(h.max()));
  if (!config.fsync_mode.empty()) absl::PrintF(",\"%s\"", config.fsync_mode);
  if (config.csv_p999) absl::PrintF(",\"%.3f\"", Milliseconds(h.ValueAtPercentile(99.9)));
  absl::PrintF("\n");
}

absl::StatusOr<sockaddr_storage> Resolve(const Endpoint& endpoint) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  uv_getaddrinfo_t request;
  const std::string port = absl::StrCat(endpoint.port);
  // Without a callback uv_getaddrinfo answers synchronously.
  const int rc =
      uv_getaddrinfo(&loop, &request, nullptr, endpoint.host.c_str(), port.c_str(), &hints);
  absl::StatusOr<sockaddr_storage> result;
  if (rc != 0 || request.addrinfo == nullptr) {
    result =
        absl::UnavailableError(absl::StrCat("cannot resolve ", endpoint.host, ": ", uv_strerror(rc)));
  } else {
    sockaddr_storage address{};
    std::memcpy(&address, request.addrinfo->ai_addr, request.addrinfo->ai_addrlen);
    result = address;
  }
  if (rc == 0) uv_freeaddrinfo(request.addrinfo);
  uv_loop_close(&loop);
  return result;
}

int Main(int argc, char** argv) {
  bool help = false;
  absl::StatusOr<Config> parsed = ParseCommandLine(argc, argv, &help);
  if (!parsed.ok()) {
    absl::FPrintF(stderr, "logkv-bench: %s\n", parsed.status().message());
    return 2;
  }
  if (help) {
    absl::PrintF("%s", kUsage);
    return 0;
  }
  if (parsed->version) {
    absl::PrintF("logkv-bench %s (%s build)\n", BuildVersion(), BuildType());
    return 0;
  }
  const Config& config = *parsed;

  // A server that closes a connection must show up as an error, not kill us.
  signal(SIGPIPE, SIG_IGN);

  std::vector<sockaddr_storage> addresses;
  for (const Endpoint& endpoint : config.endpoints) {
    absl::StatusOr<sockaddr_storage> address = Resolve(endpoint);
    if (!address.ok()) {
      absl::FPrintF(stderr, "logkv-bench: %s\n", address.status().message());
      return 1;
    }
    addresses.push_back(*address);
  }
  absl::StatusOr<RequestTemplate> set_template = BuildTemplate(Operation::kSet, config);
  absl::StatusOr<RequestTemplate> get_template = BuildTemplate(Operation::kGet, config);
  for (const auto* built : {&set_template, &get_template}) {
    if (!built->ok()) {
      absl::FPrintF(stderr, "logkv-bench: cannot build a request frame: %s\n",
                    built->status().ToString());
      return 1;
    }
  }
  const KeyChooser keys(config);
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> tls(nullptr, SSL_CTX_free);
  if (config.tls) {
    tls.reset(SSL_CTX_new(TLS_client_method()));
    SSL_CTX_set_verify(tls.get(), SSL_VERIFY_PEER, nullptr);
    // One BIO call takes what a socket read brought, not two per record
    // (the read loop asks SSL_has_pending for what it holds undecrypted).
    SSL_CTX_set_read_ahead(tls.get(), 1);
    const bool ca_read = config.cacert.empty()
                             ? SSL_CTX_set_default_verify_paths(tls.get()) == 1
                             : SSL_CTX_load_verify_locations(tls.get(), config.cacert.c_str(),
                                                             nullptr) == 1;
    if (!ca_read) {
      absl::FPrintF(stderr, "logkv-bench: --cacert %s: cannot read it\n", config.cacert);
      return 1;
    }
    if (!config.cert.empty() &&
        (SSL_CTX_use_certificate_chain_file(tls.get(), config.cert.c_str()) != 1 ||
         SSL_CTX_use_PrivateKey_file(tls.get(), config.key.c_str(), SSL_FILETYPE_PEM) != 1)) {
      absl::FPrintF(stderr, "logkv-bench: --cert %s / --key %s: cannot read them\n", config.cert,
                    config.key);
      return 1;
    }
  }

  if (config.csv) PrintCsvHeader(config);
  uint64_t total_errors = 0;
  for (Workload workload : config.workloads) {
    std::unique_ptr<TestResult> result =
        RunTest(config, workload, *set_template, *get_template, keys,
                addresses, tls.get());
    // Figures from fewer connections than asked for would not compare with
    // anything, and the other tests could only fail the same way.
    if (result->connect_failures > 0) {
      absl::FPrintF(stderr, "logkv-bench: %s: %d of %d connections failed; first error: %s\n",
                    WorkloadName(workload), result->connect_failures, config.clients,
                    result->first_error);
      return 1;
    }
    if (config.csv) {
      PrintCsv(config, *result);
    } else if (config.quiet) {
      PrintQuiet(*result);
    } else {
      PrintHuman(config, *result);
    }
    fflush(stdout);
    total_errors += result->errors;
    if (result->errors > 0) {
      absl::FPrintF(stderr, "logkv-bench: %s: %d errors; first: %s\n", WorkloadName(workload),
                    result->errors, result->first_error);
    }
  }
  return total_errors > 0 ? 1 : 0;
}

}  // namespace
}  // namespace logkv::tools

int main(int argc, char** argv) { return logkv::tools::Main(argc, argv); }
