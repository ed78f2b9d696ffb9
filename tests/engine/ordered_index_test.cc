// The index's two views besides lookup by key: key order (what Scan pages
// through) and the grouping by Merkle partition (what MerkleLeafKeys walks).
// Both are kept by every insert and removal and built once at start-up, so
// each test checks them against an oracle before and after a reopen, and
// after writes that follow the reopen. Keys are chosen to stress the order:
// bytes 0x00 and 0xff, long shared prefixes, keys that are prefixes of others.
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/engine/engine_fixture.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/test_util.h"

namespace logkv::engine {
namespace {

using test::Random;

// A key with a shared prefix of a random length (0 to 40 bytes) and a short
// random tail over a small alphabet that includes 0x00 and 0xff, so that
// equal prefixes, prefix keys and unsigned byte order all come up.
std::string RandomKey(Random* random) {
  static const std::string kPrefix = "tenant/0123456789abcdef/users/0000000000";
  static const char kAlphabet[] = {'\x00', '\x01', 'a', 'b', '\x7f', '\x80', '\xff'};
  std::string key = kPrefix.substr(0, random->Uniform(kPrefix.size() + 1));
  const size_t tail = 1 + random->Uniform(key.size() > 30 ? 3 : 12);
  for (size_t i = 0; i < tail; ++i) key.push_back(kAlphabet[random->Uniform(sizeof(kAlphabet))]);
  return key;
}

class OrderedIndexTest : public test::EngineFixture<::testing::TestWithParam<uint32_t>> {
 protected:
  void SetUp() override {
    test::EngineFixture<::testing::TestWithParam<uint32_t>>::SetUp();
    options_.merkle_partitions = GetParam();
    options_.merkle_leaves = 16;
    ASSERT_OK(Open());
  }

  // Random puts, deletes and forgets; the oracle follows (live keys with
  // their timestamps, tombstones apart).
  void Mutate(Random* random, int operations) {
    std::string previous = RandomKey(random);
    for (int i = 0; i < operations; ++i) {
      // Now and then the previous key with a zero byte or a byte appended:
      // keys that differ only past another key's end.
      const std::string key = random->Percent(20)
                                  ? previous + (random->Percent(50) ? '\x00' : '\xff')
                                  : RandomKey(random);
      previous = key;
      const uint64_t roll = random->Uniform(10);
      if (roll < 6) {
        ASSERT_OK(engine_->Put(key, absl::StrCat("v", i)));
        live_.insert(key);
        tombstones_.erase(key);
      } else if (roll < 9) {
        // A delete of a key not live is NotFound and changes nothing.
        const absl::Status status = engine_->Delete(key).status();
        if (live_.erase(key) > 0) {
          ASSERT_OK(status);
          tombstones_.insert(key);
        } else {
          ASSERT_TRUE(absl::IsNotFound(status)) << status;
        }
      } else {
        ASSERT_OK_AND_ASSIGN(KeyRecord record, engine_->GetRecord(key, false));
        if (!record.found) continue;
        ASSERT_OK_AND_ASSIGN(bool forgotten, engine_->Forget(key, record.timestamp));
        ASSERT_TRUE(forgotten);
        live_.erase(key);
        tombstones_.erase(key);
      }
    }
  }

  // Scan in pages of `limit` with the given bounds against the oracle.
  void CheckScan(const ScanOptions& bounds, uint32_t limit) {
    std::vector<std::string> expected;
    for (const std::string& key : live_) {
      if (!absl::StartsWith(key, bounds.prefix)) continue;
      if (!bounds.start_key.empty() && key < bounds.start_key) continue;
      if (!bounds.end_key.empty() && key >= bounds.end_key) continue;
      expected.push_back(key);
    }
    std::vector<std::string> got;
    ScanOptions options = bounds;
    options.limit = limit;
    options.keys_only = true;
    options.build_key_order = build_key_order_;
    for (int page = 0; page < 100000; ++page) {
      ASSERT_OK_AND_ASSIGN(ScanResult result, engine_->Scan(options));
      ASSERT_LE(result.items.size(), limit);
      for (ScanItem& item : result.items) got.push_back(std::move(item.key));
      if (result.next_cursor.empty()) break;
      options.after_key = result.next_cursor;
    }
    ASSERT_EQ(got, expected) << "prefix '" << bounds.prefix << "' limit " << limit;
  }

  void CheckScans(Random* random) {
    CheckScan(ScanOptions{}, 1);
    CheckScan(ScanOptions{}, 7);
    CheckScan(ScanOptions{}, kMaxScanLimit);
    for (int i = 0; i < 20; ++i) {
      ScanOptions bounds;
      const std::string a = RandomKey(random);
      const std::string b = RandomKey(random);
      switch (random->Uniform(4)) {
        case 0: bounds.prefix = a.substr(0, random->Uniform(a.size() + 1)); break;
        case 1: bounds.start_key = std::min(a, b); bounds.end_key = std::max(a, b); break;
        case 2: bounds.start_key = a; break;
        default:
          bounds.prefix = a.substr(0, random->Uniform(a.size() + 1));
          bounds.start_key = b;
          break;
      }
      CheckScan(bounds, static_cast<uint32_t>(1 + random->Uniform(50)));
      // A cursor taken from anywhere (not only a page's last key) still
      // starts the page just after it.
      ScanOptions after = bounds;
      after.after_key = RandomKey(random);
      after.limit = kMaxScanLimit;
      after.keys_only = true;
      after.build_key_order = build_key_order_;
      ASSERT_OK_AND_ASSIGN(ScanResult result, engine_->Scan(after));
      std::vector<std::string> expected;
      for (const std::string& key : live_) {
        if (key <= after.after_key || !absl::StartsWith(key, bounds.prefix)) continue;
        if (!bounds.start_key.empty() && key < bounds.start_key) continue;
        if (!bounds.end_key.empty() && key >= bounds.end_key) continue;
        expected.push_back(key);
      }
      std::vector<std::string> got;
      for (const ScanItem& item : result.items) got.push_back(item.key);
      ASSERT_EQ(got, expected);
    }
  }

  // Every partition's leaf keys: exactly the indexed keys (live and
  // tombstoned) of that partition, in key order, with their tombstone bits.
  void CheckLeafKeys() {
    std::vector<uint32_t> all_leaves;
    for (uint32_t leaf = 0; leaf < engine_->MerkleLeafCount(); ++leaf) {
      all_leaves.push_back(engine_->MerkleLeafCount() + leaf);
    }
    std::map<std::string, bool> seen;  // key -> tombstone
    for (uint32_t partition = 0; partition < engine_->MerklePartitionCount(); ++partition) {
      ASSERT_OK_AND_ASSIGN(std::vector<Engine::LeafKey> keys,
                           engine_->MerkleLeafKeys(partition, all_leaves));
      for (size_t i = 0; i < keys.size(); ++i) {
        if (i > 0) {
          ASSERT_LT(keys[i - 1].key, keys[i].key);
        }
        ASSERT_EQ(engine_->MerklePartitionOf(keys[i].key), partition);
        seen[keys[i].key] = keys[i].tombstone;
      }
    }
    std::map<std::string, bool> expected;
    for (const std::string& key : live_) expected[key] = false;
    for (const std::string& key : tombstones_) expected[key] = true;
    ASSERT_EQ(seen, expected);
  }

  uint64_t IndexBytes() { return engine_->GetStats().index_bytes; }

  std::set<std::string> live_;
  std::set<std::string> tombstones_;
  bool build_key_order_ = true;  // what the scans of CheckScans ask for
};

TEST_P(OrderedIndexTest, ScanAndLeafKeysMatchTheOracleAcrossReopens) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("LOGKV_TEST_SEED=", seed));
  Random random(seed);
  Mutate(&random, 3000);
  CheckScans(&random);
  CheckLeafKeys();
  // Reopen: the order is built from the loaded keys at once.
  ASSERT_OK(Reopen());
  CheckScans(&random);
  CheckLeafKeys();
  // Writes after the build keep it.
  Mutate(&random, 2000);
  CheckScans(&random);
  CheckLeafKeys();
  ASSERT_OK(engine_->CompactNow(/*force=*/true));
  ASSERT_OK(Reopen());
  CheckScans(&random);
  CheckLeafKeys();
}

// Scans that do not build the key order (a start-up load) find the same
// pages by walking every key, and leave a store no other scan ordered
// without the order (its bytes are not spent); once an ordinary scan built
// it, they use it. (Half the writes of the test above: every page of such a
// scan walks every key, so pages of one key cost the square of the keys.)
TEST_P(OrderedIndexTest, ScansThatDoNotBuildTheOrderMatchTheOracle) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("LOGKV_TEST_SEED=", seed));
  Random random(seed);
  Mutate(&random, 1500);
  build_key_order_ = false;
  const uint64_t unordered_bytes = IndexBytes();
  CheckScans(&random);
  EXPECT_EQ(IndexBytes(), unordered_bytes);
  // Writes after such scans, then the same after a reopen.
  Mutate(&random, 500);
  CheckScans(&random);
  ASSERT_OK(Reopen());
  const uint64_t reopened_bytes = IndexBytes();
  CheckScans(&random);
  EXPECT_EQ(IndexBytes(), reopened_bytes);
  // An ordinary scan builds the order (its bytes count); the others use it.
  build_key_order_ = true;
  CheckScans(&random);
  EXPECT_GT(IndexBytes(), reopened_bytes);
  build_key_order_ = false;
  Mutate(&random, 500);
  CheckScans(&random);
}

// Keys under Options::ordered_prefixes are kept in an order of their own
// from the start: scans within one of those prefixes (whether or not they
// may build the whole order) read that order alone and find what the oracle
// holds, across puts, deletes, forgets, reopens and a compaction; the rest of
// the store stays unordered until a scan outside them builds its order.
TEST_P(OrderedIndexTest, OrderedPrefixesKeepAnOrderOfTheirOwn) {
  const uint64_t seed = test::TestSeed();
  SCOPED_TRACE(absl::StrCat("LOGKV_TEST_SEED=", seed));
  Random random(seed);
  // Prefixes that RandomKey's keys fall under (or just beside): a long
  // shared one, one a zero byte, one that is another key's prefix plus 0xff.
  const std::vector<std::string> ordered = {"tenant/0123456789", std::string(1, '\x00'),
                                            "a\xff"};
  ASSERT_OK(engine_->Close());
  options_.ordered_prefixes = ordered;
  ASSERT_OK(Open());
  // The prefixes scanned: each ordered one and longer ones under them, and
  // (beside) shorter or neighbouring ones, which take the other paths.
  std::vector<std::string> under = ordered;
  std::vector<std::string> beside = {"a", "tenant/"};
  for (const std::string& prefix : ordered) {
    under.push_back(prefix + '\x00');
    under.push_back(prefix + 'a');
    beside.push_back(prefix.substr(0, prefix.size() - 1));
  }
  under.push_back("tenant/0123456789a");
  auto check = [&](bool build_key_order, bool beside_too = true) {
    build_key_order_ = build_key_order;
    for (const std::string& prefix : under) {
      ScanOptions bounds;
      bounds.prefix = prefix;
      for (uint32_t limit : {1u, 3u, 50u, kMaxScanLimit}) CheckScan(bounds, limit);
      // With a start key inside the run, and an end key.
      bounds.start_key = prefix + '\x01';
      CheckScan(bounds, 2);
      bounds.end_key = prefix + 'b';
      CheckScan(bounds, 5);
    }
    // One page each: without the order every page walks every key.
    for (const std::string& prefix : beside_too ? beside : std::vector<std::string>{}) {
      ScanOptions bounds;
      bounds.prefix = prefix;
      CheckScan(bounds, kMaxScanLimit);
    }
  };
  Mutate(&random, 3000);
  size_t keys_under = 0;
  for (const std::string& key : live_) {
    for (const std::string& prefix : ordered) keys_under += absl::StartsWith(key, prefix) ? 1 : 0;
  }
  ASSERT_GT(keys_under, 20u) << "the random keys should fall under the ordered prefixes";
  const uint64_t unordered_bytes = IndexBytes();
  check(false);
  // Within the ordered prefixes a scan that may build the whole order
  // leaves it unbuilt: nothing else is ordered.
  check(true, /*beside_too=*/false);
  EXPECT_EQ(IndexBytes(), unordered_bytes);
  Mutate(&random, 1000);
  check(false);
  ASSERT_OK(Reopen());
  check(false);
  Mutate(&random, 1000);
  check(true);
  ASSERT_OK(engine_->CompactNow(/*force=*/true));
  ASSERT_OK(Reopen());
  check(false);
  // A scan outside them builds the whole order; both are kept from then on.
  build_key_order_ = true;
  CheckScans(&random);
  Mutate(&random, 1000);
  check(false);
  CheckScans(&random);
}

TEST(OrderedPrefixesTest, AnEmptyPrefixIsRefused) {
  test::ScopedTempDir dir;
  Options options = test::TestOptions(dir.Subdir("db"));
  options.ordered_prefixes = {std::string("\0hint/", 6), ""};
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(options);
  ASSERT_FALSE(engine.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(engine.status())) << engine.status();
  EXPECT_TRUE(absl::StrContains(engine.status().message(), "ordered_prefixes"))
      << engine.status();
}

// Merkle partitions: one (no grouping), the test default, the engine's
// default, and more than KeyIndex groups a shard (256), where a group holds
// several partitions.
INSTANTIATE_TEST_SUITE_P(Partitions, OrderedIndexTest, ::testing::Values(1u, 8u, 64u, 1024u));

}  // namespace
}  // namespace logkv::engine
