// scale_bench: what a Scan page and a wiped replica's refill cost as the store grows.
//
//   scale_bench --scan   [--sizes=100000,1000000,5000000] [--pages=200]
//   scale_bench --refill [--sizes=100000,1000000]
//   scale_bench --own    [--sizes=100000,1000000,5000000] [--own-keys=50000]
//
// Each size gets a fresh store (2 shards, as logkvd on 2 cores; Merkle trees 64 x 1024 as
// logkvd's; fsync never) filled in random order with 16-byte keys (the number n as 16 hex
// digits) and 100-byte values. Times are the CPU time of the benchmark's thread
// (CLOCK_THREAD_CPUTIME_ID), which other load on the machine disturbs less than wall time;
// everything measured runs on that one thread.
//
// --scan, per size:
//   first page  the store's first Scan (1 item): it builds the key order where a build keeps one
//   page100   a Scan page of 100 items with values, from a random cursor (mean over --pages)
//   page1000  a keys-only Scan page of 1,000 keys, from a random cursor
//   get100    100 Gets of random keys: the reads a 100-item page makes anyway (reference)
//   pass      one pass over the whole index (Engine::ListKeys to the end): what a page cost
//             when Scan walked every key (reference)
//   index B/key  Stats::index_bytes / keys, before the first scan and after the pages
// A page cost independent of the key count shows as a flat page100/get100 ratio.
//
// --refill, per size: node "b", empty, pulls everything from node "a" with one anti-entropy
// round (the real AntiEntropy, unlimited rate, requests handed to a's handlers in-process, as
// tests/cluster/anti_entropy_test does), against a reference in the same run: copying the same
// keys with ListKeys, GetRecord and a timestamped Put into another empty store. The round's
// time is split into a's answers to MerkleLeaf (listing a partition's keys) and the rest. A
// refill linear in the keys shows as constant keys/s and a constant refill/copy ratio.
// Then a drift round: one new key on a in each of the 64 Merkle partitions and one more
// round (what a round under a write load meets: most partitions differ by a few keys);
// its time, and a's share of it answering MerkleLeaf.
//
// --own, per size: --own-keys more keys under a prefix of the store's own ("\0hint/", as
// logkvd's hinted handoff), read in pages of 10,000 the way logkvd reads them at start-up
// (ScanOptions::build_key_order false: a store clients never scan stays unordered), in two
// stores filled alike: one whose Options::ordered_prefixes names that prefix (as logkvd's
// does), and one without (the reference: every page walks every key). With the ordered prefix
// a page costs its own keys' reads (Gets of their values, dearer in a larger index as every
// Get is); walked, a pass over every key besides.
//
// The sources build against the engine's public API and the cluster library only, so the
// same file compiled at an older commit measures the code before a change.
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "engine/engine.h"
#include "protocol/frame.h"
#include "server/cluster/anti_entropy.h"
#include "server/cluster/replica.h"

namespace logkv::bench {
namespace {

namespace fs = std::filesystem;
using server::cluster::AntiEntropy;
using server::cluster::AntiEntropyFigures;
using server::cluster::AntiEntropyOptions;
using server::cluster::Member;
using server::cluster::PeerSendFunction;
using server::cluster::PeerTransport;

double ThreadCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double WallSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

[[noreturn]] void Die(const absl::Status& status, const char* what) {
  std::fprintf(stderr, "scale_bench: %s: %s\n", what, status.ToString().c_str());
  std::exit(1);
}

std::string KeyOf(uint64_t n) { return absl::StrFormat("%016x", n); }

struct Store {
  std::string dir;
  std::unique_ptr<engine::Engine> engine;

  explicit Store(const std::string& name, std::vector<std::string> ordered_prefixes = {}) {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = absl::StrFormat("%s/scale_bench.%s.XXXXXX", tmp ? tmp : "/tmp", name);
    if (mkdtemp(pattern.data()) == nullptr) Die(absl::InternalError("mkdtemp"), "temp dir");
    dir = pattern;
    engine::Options options;
    options.data_dir = dir;
    options.shard_count = 2;
    options.fsync = engine::FsyncPolicy::kNever;
    options.background_threads = false;
    options.log = [](engine::LogLevel, absl::string_view) {};
    options.ordered_prefixes = std::move(ordered_prefixes);
    auto opened = engine::Engine::Open(options);
    if (!opened.ok()) Die(opened.status(), "open");
    engine = *std::move(opened);
  }
  ~Store() {
    if (engine != nullptr) (void)engine->Close();
    engine.reset();
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }
};

// Puts keys 0..n-1 in a random order.
void Fill(engine::Engine* engine, uint64_t n, uint64_t seed) {
  std::vector<uint64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 random(seed);
  std::shuffle(order.begin(), order.end(), random);
  const std::string value(100, 'v');
  for (const uint64_t i : order) {
    absl::StatusOr<engine::WriteResult> put = engine->Put(KeyOf(i), value);
    if (!put.ok()) Die(put.status(), "put");
  }
}

void RunScan(const std::vector<uint64_t>& sizes, int pages) {
  std::printf("| keys | first page ms | page100 µs | page1000 µs | get100 µs | pass µs | "
              "page100/get100 | pass/page100 | index B/key before / after a scan |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const uint64_t n : sizes) {
    Store store("scan");
    engine::Engine* engine = store.engine.get();
    Fill(engine, n, n);
    std::mt19937_64 random(42);
    std::uniform_int_distribution<uint64_t> any(0, n - 1);
    std::string value;
    engine::ValueMeta meta;

    const engine::Stats unscanned = engine->GetStats();
    // The first scan of a store may build what later pages use.
    double first_page_ms;
    {
      engine::ScanOptions options;
      options.limit = 1;
      const double start = ThreadCpuSeconds();
      absl::StatusOr<engine::ScanResult> page = engine->Scan(options);
      first_page_ms = (ThreadCpuSeconds() - start) * 1e3;
      if (!page.ok()) Die(page.status(), "scan");
    }
    auto time_pages = [&](uint32_t limit, bool keys_only) {
      double total = 0;
      for (int i = 0; i < pages; ++i) {
        engine::ScanOptions options;
        options.limit = limit;
        options.keys_only = keys_only;
        options.after_key = KeyOf(any(random));
        const double start = ThreadCpuSeconds();
        absl::StatusOr<engine::ScanResult> page = engine->Scan(options);
        total += ThreadCpuSeconds() - start;
        if (!page.ok()) Die(page.status(), "scan");
      }
      return total / pages * 1e6;
    };
    const double page100 = time_pages(100, false);
    const double page1000 = time_pages(1000, true);
    double gets = 0;
    for (int i = 0; i < pages; ++i) {
      std::vector<std::string> keys;
      for (int k = 0; k < 100; ++k) keys.push_back(KeyOf(any(random)));
      const double start = ThreadCpuSeconds();
      for (const std::string& key : keys) {
        if (absl::Status status = engine->Get(key, &value, &meta); !status.ok()) {
          Die(status, "get");
        }
      }
      gets += ThreadCpuSeconds() - start;
    }
    const double get100 = gets / pages * 1e6;
    const int passes = n >= 1'000'000 ? 2 : 5;
    double pass_total = 0;
    for (int i = 0; i < passes; ++i) {
      engine::Engine::KeyCursor cursor;
      uint64_t listed = 0;
      const double start = ThreadCpuSeconds();
      while (!cursor.done) {
        auto keys = engine->ListKeys(&cursor, engine::kMaxScanLimit);
        if (!keys.ok()) Die(keys.status(), "list keys");
        listed += keys->size();
      }
      pass_total += ThreadCpuSeconds() - start;
      if (listed != n) Die(absl::InternalError(absl::StrCat("listed ", listed)), "list keys");
    }
    const double pass = pass_total / passes * 1e6;
    const engine::Stats stats = engine->GetStats();
    std::printf("| %" PRIu64 " | %.1f | %.1f | %.1f | %.1f | %.0f | %.2f | %.0f | %.1f / %.1f |\n", n,
                first_page_ms, page100,
                page1000, get100, pass, page100 / get100, pass / page100,
                static_cast<double>(unscanned.index_bytes) / static_cast<double>(unscanned.keys),
                static_cast<double>(stats.index_bytes) / static_cast<double>(stats.keys));
    std::fflush(stdout);
  }
}

void RunOwn(const std::vector<uint64_t>& sizes, uint64_t own_keys) {
  const std::string prefix("\0hint/", 6);
  std::printf("| keys | own keys | pages | ordered ms | walked ms | walked/ordered |\n");
  std::printf("| --- | --- | --- | --- | --- | --- |\n");
  for (const uint64_t n : sizes) {
    double ms[2];
    uint64_t pages = 0;
    for (const bool ordered : {true, false}) {
      Store store(ordered ? "own-ordered" : "own-walked",
                  ordered ? std::vector<std::string>{prefix} : std::vector<std::string>{});
      engine::Engine* engine = store.engine.get();
      Fill(engine, n, n);
      for (uint64_t i = 0; i < own_keys; ++i) {
        std::string key = prefix;
        for (int b = 7; b >= 0; --b) key.push_back(static_cast<char>((i >> (8 * b)) & 0xff));
        if (!engine->Put(key, std::string(100, 'h')).ok()) Die(absl::InternalError("put"), "put");
      }
      engine::ScanOptions options;
      options.prefix = prefix;
      options.limit = engine::kMaxScanLimit;
      options.build_key_order = false;
      uint64_t read = 0;
      pages = 0;
      const double start = ThreadCpuSeconds();
      while (true) {
        absl::StatusOr<engine::ScanResult> page = engine->Scan(options);
        if (!page.ok()) Die(page.status(), "scan");
        read += page->items.size();
        ++pages;
        if (page->next_cursor.empty()) break;
        options.after_key = page->next_cursor;
      }
      ms[ordered ? 0 : 1] = (ThreadCpuSeconds() - start) * 1e3;
      if (read != own_keys) {
        Die(absl::InternalError(absl::StrCat("read ", read, " of ", own_keys)), "own scan");
      }
    }
    std::printf("| %" PRIu64 " | %" PRIu64 " | %" PRIu64 " | %.1f | %.1f | %.1f |\n", n, own_keys,
                pages, ms[0], ms[1], ms[1] / ms[0]);
    std::fflush(stdout);
  }
}

// Hands request frames to one node's handlers, timing each operation.
class InProcessNetwork {
 public:
  explicit InProcessNetwork(engine::Engine* engine) : engine_(engine) {}

  PeerSendFunction Sender() {
    return [this](const std::string&, std::string frame, absl::Duration,
                  PeerTransport::Callback done) { Deliver(frame, std::move(done)); };
  }
  double merkle_leaf_seconds() const { return merkle_leaf_seconds_; }
  uint64_t merkle_leaf_requests() const { return merkle_leaf_requests_; }

 private:
  void Deliver(const std::string& frame, PeerTransport::Callback done) {
    absl::StatusOr<const protocol::Request*> request =
        protocol::VerifyRequest(frame, protocol::Limits{});
    if (!request.ok()) return done(request.status());
    const protocol::Request& r = **request;
    flatbuffers::FlatBufferBuilder builder(1024);
    switch (r.operation_type()) {
      case protocol::Operation::MerkleHashes:
        server::cluster::HandleMerkleHashes(engine_, r, &builder);
        break;
      case protocol::Operation::MerkleLeaf: {
        const double start = ThreadCpuSeconds();
        server::cluster::HandleMerkleLeaf(engine_, r, 64u << 20, &builder);
        merkle_leaf_seconds_ += ThreadCpuSeconds() - start;
        ++merkle_leaf_requests_;
        break;
      }
      case protocol::Operation::ReadRecords:
        server::cluster::HandleReadRecords(engine_, r, &builder);
        break;
      default:
        return done(absl::InvalidArgumentError("not answered in this benchmark"));
    }
    done(std::string(protocol::FrameOf(builder)));
  }

  engine::Engine* const engine_;
  double merkle_leaf_seconds_ = 0;
  uint64_t merkle_leaf_requests_ = 0;
};

void RunRefill(const std::vector<uint64_t>& sizes) {
  std::printf("| keys | refill s | of which MerkleLeaf s | copy s | refill keys/s | "
              "copy keys/s | refill/copy | drift round ms | of which MerkleLeaf ms |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const uint64_t n : sizes) {
    Store a("a");
    Fill(a.engine.get(), n, n);
    // The reference: every key copied with its timestamp into an empty store.
    double copy_seconds;
    {
      Store c("c");
      const double start = ThreadCpuSeconds();
      engine::Engine::KeyCursor cursor;
      while (!cursor.done) {
        auto keys = a.engine->ListKeys(&cursor, 128);
        if (!keys.ok()) Die(keys.status(), "list keys");
        for (const engine::Engine::LeafKey& key : *keys) {
          absl::StatusOr<engine::KeyRecord> record = a.engine->GetRecord(key.key, true);
          if (!record.ok()) Die(record.status(), "get record");
          engine::WriteOptions options;
          options.timestamp = record->timestamp;
          absl::StatusOr<engine::WriteResult> put = c.engine->Put(key.key, record->value, options);
          if (!put.ok()) Die(put.status(), "copy put");
        }
      }
      copy_seconds = ThreadCpuSeconds() - start;
      if (c.engine->GetStats().keys != n) Die(absl::InternalError("copy incomplete"), "copy");
    }
    Store b("b");
    InProcessNetwork network(a.engine.get());
    AntiEntropyOptions options;
    options.bytes_per_second = 0;
    options.interval = absl::Hours(1);
    options.initial_delay = absl::Hours(1);
    options.push = false;
    Member peer;
    peer.node_id = "a";
    peer.address = "a:7070";
    AntiEntropy ae(
        b.engine.get(), network.Sender(), [] { return nullptr; },
        [peer] { return std::vector<Member>{peer}; }, "b", nullptr, options);
    const double start = ThreadCpuSeconds();
    absl::StatusOr<AntiEntropyFigures> round = ae.RunOnce("a");
    const double refill_seconds = ThreadCpuSeconds() - start;
    if (!round.ok()) Die(round.status(), "anti-entropy round");
    if (b.engine->GetStats().keys != n || round->keys_pulled != n) {
      Die(absl::InternalError(absl::StrCat("refill holds ", b.engine->GetStats().keys, " of ", n,
                                           " keys")),
          "refill");
    }
    // Drift: one new key in every Merkle partition of a, then a round (what a
    // round under a write load meets: most partitions differ, by a few keys).
    const uint32_t partitions = a.engine->MerklePartitionCount();
    std::vector<bool> written(partitions, false);
    uint32_t left = partitions;
    for (uint64_t i = 0; left > 0; ++i) {
      const std::string key = absl::StrFormat("drift-%016x", i);
      const uint32_t partition = a.engine->MerklePartitionOf(key);
      if (written[partition]) continue;
      written[partition] = true;
      --left;
      if (!a.engine->Put(key, "drift").ok()) Die(absl::InternalError("put"), "drift put");
    }
    const double leaf_before = network.merkle_leaf_seconds();
    const double drift_start = ThreadCpuSeconds();
    absl::StatusOr<AntiEntropyFigures> drift = ae.RunOnce("a");
    const double drift_seconds = ThreadCpuSeconds() - drift_start;
    if (!drift.ok()) Die(drift.status(), "drift round");
    if (drift->keys_pulled != partitions) {
      Die(absl::InternalError(absl::StrCat("drift pulled ", drift->keys_pulled)), "drift round");
    }
    std::printf("| %" PRIu64 " | %.2f | %.2f | %.2f | %.0f | %.0f | %.2f | %.1f | %.1f |\n", n,
                refill_seconds, leaf_before, copy_seconds,
                static_cast<double>(n) / refill_seconds, static_cast<double>(n) / copy_seconds,
                refill_seconds / copy_seconds, drift_seconds * 1e3,
                (network.merkle_leaf_seconds() - leaf_before) * 1e3);
    std::fflush(stdout);
  }
}

int Main(int argc, char** argv) {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  bool scan = false;
  bool refill = false;
  bool own = false;
  uint64_t own_keys = 50'000;
  std::vector<uint64_t> sizes;
  int pages = 200;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--scan") {
      scan = true;
    } else if (arg == "--refill") {
      refill = true;
    } else if (arg == "--own") {
      own = true;
    } else if (arg.rfind("--own-keys=", 0) == 0) {
      if (!absl::SimpleAtoi(arg.substr(11), &own_keys) || own_keys == 0) {
        std::fprintf(stderr, "scale_bench: bad --own-keys\n");
        return 2;
      }
    } else if (arg.rfind("--sizes=", 0) == 0) {
      for (absl::string_view part : absl::StrSplit(arg.substr(8), ',')) {
        uint64_t size;
        if (!absl::SimpleAtoi(part, &size) || size == 0) {
          std::fprintf(stderr, "scale_bench: bad size '%s'\n", std::string(part).c_str());
          return 2;
        }
        sizes.push_back(size);
      }
    } else if (arg.rfind("--pages=", 0) == 0) {
      if (!absl::SimpleAtoi(arg.substr(8), &pages) || pages <= 0) {
        std::fprintf(stderr, "scale_bench: bad --pages\n");
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "usage: scale_bench --scan|--refill|--own [--sizes=N,N,...] [--pages=N] "
                   "[--own-keys=N]\n");
      return 2;
    }
  }
  if (int{scan} + int{refill} + int{own} != 1) {
    std::fprintf(stderr, "scale_bench: one of --scan, --refill and --own\n");
    return 2;
  }
  if (sizes.empty()) {
    sizes = refill ? std::vector<uint64_t>{100'000, 1'000'000}
                   : std::vector<uint64_t>{100'000, 1'000'000, 5'000'000};
  }
  const double start = WallSeconds();
  if (scan) RunScan(sizes, pages);
  if (refill) RunRefill(sizes);
  if (own) RunOwn(sizes, own_keys);
  std::fprintf(stderr, "scale_bench: %.1f s\n", WallSeconds() - start);
  return 0;
}

}  // namespace
}  // namespace logkv::bench

int main(int argc, char** argv) { return logkv::bench::Main(argc, argv); }
