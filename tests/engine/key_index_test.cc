// KeyIndex's lookups without comparing keys (ForEachCandidate), which
// start-up uses to prefetch what a lookup a few records later reads: every
// id it shows is one a Find would have compared, a present key's own entry
// is always among them, and it changes nothing in the index. And the
// expiries kept beside the slab: what is set is read back, a removed entry's
// id starts again without one, and memory follows the entries that have one.
// And the keys under ordered prefixes, kept in an order of their own.
#include "engine/key_index.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/log_record.h"
#include "gtest/gtest.h"

namespace logkv::engine {
namespace {

KeyRef Ref(const std::string& key) { return KeyRef{key, HashKey(key)}; }

std::vector<uint32_t> Candidates(const KeyIndex& index, const std::string& key) {
  std::vector<uint32_t> ids;
  index.ForEachCandidate(Ref(key), [&](uint32_t id) { ids.push_back(id); });
  return ids;
}

TEST(KeyIndexTest, ForEachCandidateShowsThePresentKeysEntryAndChangesNothing) {
  // Group bits 0 and 4: one table, and keys spread over sixteen.
  for (const int group_bits : {0, 4}) {
    SCOPED_TRACE(absl::StrCat("group_bits=", group_bits));
    KeyIndex index(group_bits);
    constexpr int kKeys = 20000;
    std::vector<std::string> keys;
    std::vector<uint32_t> ids;
    for (int i = 0; i < kKeys; ++i) {
      keys.push_back(absl::StrCat("key:", i));
      ids.push_back(index.Insert(Ref(keys.back())));
    }
    for (int i = 0; i < kKeys; ++i) {
      const std::vector<uint32_t> candidates = Candidates(index, keys[i]);
      int own = 0;
      for (const uint32_t id : candidates) {
        ASSERT_TRUE(index.contains_id(id)) << keys[i] << " showed id " << id;
        if (id == ids[i]) ++own;
      }
      EXPECT_EQ(own, 1) << keys[i] << " (id " << ids[i] << ") among " << candidates.size();
    }
    // An absent key's candidates are other keys' entries (an equal control
    // byte), which a Find would compare and reject.
    for (int i = 0; i < kKeys; ++i) {
      const std::string absent = absl::StrCat("absent:", i);
      for (const uint32_t id : Candidates(index, absent)) {
        ASSERT_TRUE(index.contains_id(id)) << absent << " showed id " << id;
        EXPECT_NE(index.at(id).key(), absent);
      }
    }
    EXPECT_EQ(index.size(), static_cast<size_t>(kKeys));
    for (int i = 0; i < kKeys; ++i) ASSERT_EQ(index.Find(Ref(keys[i])), ids[i]) << keys[i];
    EXPECT_EQ(index.Find(Ref("absent:0")), KeyIndex::kNoEntry);
  }
}

TEST(KeyIndexTest, ForEachCandidateAfterRemovalsShowsOnlyLiveEntries) {
  KeyIndex index(2);
  std::vector<std::string> keys;
  std::vector<uint32_t> ids;
  for (int i = 0; i < 5000; ++i) {
    keys.push_back(absl::StrCat("k", i));
    ids.push_back(index.Insert(Ref(keys.back())));
  }
  for (int i = 0; i < 5000; i += 2) index.Remove(ids[i]);
  for (int i = 0; i < 5000; ++i) {
    const std::vector<uint32_t> candidates = Candidates(index, keys[i]);
    bool own = false;
    for (const uint32_t id : candidates) {
      ASSERT_TRUE(index.contains_id(id)) << keys[i] << " showed removed id " << id;
      own = own || id == ids[i];
    }
    // A removed key's id is free (and not in any table) until reused.
    EXPECT_EQ(own, i % 2 == 1) << keys[i];
  }
}

// The keys under the ordered prefixes, in key order, whatever else the index
// holds, after removals whose ids new keys reuse, and after a Clear (what a
// refused index snapshot's partial load is undone with).
std::vector<std::string> UnderPrefix(const KeyIndex& index, const std::string& prefix) {
  std::vector<std::string> keys;
  for (auto it = index.PrefixOrderedFrom(prefix, false); it != index.PrefixOrderedEnd(); ++it) {
    const std::string key(index.at(*it).key());
    if (key.compare(0, prefix.size(), prefix) != 0) break;
    keys.push_back(key);
  }
  return keys;
}

TEST(KeyIndexTest, OrderedPrefixesKeepTheirKeysInOrderThroughRemovalsAndClear) {
  // Two prefixes sharing a first byte, as logkvd's own do, and one nested
  // under a shorter key of another prefix's byte.
  const std::string hints("\0hint/", 6);
  const std::string auth("\0auth/", 6);
  KeyIndex index(2, {hints, auth, "p/"});
  EXPECT_TRUE(index.UnderOrderedPrefix(hints + "x"));
  EXPECT_TRUE(index.UnderOrderedPrefix(auth));
  EXPECT_FALSE(index.UnderOrderedPrefix(std::string("\0t", 2) + "x"));  // a tenant's key
  EXPECT_FALSE(index.UnderOrderedPrefix("p"));
  EXPECT_FALSE(index.UnderOrderedPrefix(""));
  std::vector<uint32_t> ids;
  for (const std::string& key :
       std::vector<std::string>{hints + "b", std::string("\0t", 2) + "1", "p/b", hints + "a",
                                auth + "z", "q", "p/a", hints + std::string(1, '\xff')}) {
    ids.push_back(index.Insert(Ref(key)));
  }
  using Keys = std::vector<std::string>;
  EXPECT_EQ(UnderPrefix(index, hints), (Keys{hints + "a", hints + "b", hints + "\xff"}));
  EXPECT_EQ(UnderPrefix(index, auth), (Keys{auth + "z"}));
  EXPECT_EQ(UnderPrefix(index, "p/"), (Keys{"p/a", "p/b"}));
  EXPECT_EQ(index.prefix_ordered_keys(), 6u);
  // Removed, and the id reused by a key outside the prefixes, then by one
  // inside: the order follows.
  index.Remove(ids[0]);  // \0hint/b
  const uint32_t reused = index.Insert(Ref("r"));
  EXPECT_EQ(reused, ids[0]);
  EXPECT_EQ(UnderPrefix(index, hints), (Keys{hints + "a", hints + "\xff"}));
  EXPECT_EQ(index.prefix_ordered_keys(), 5u);
  index.Remove(reused);
  EXPECT_EQ(index.Insert(Ref(hints + "c")), ids[0]);
  EXPECT_EQ(UnderPrefix(index, hints), (Keys{hints + "a", hints + "c", hints + "\xff"}));
  // Cleared, then filled again in another order: only the new keys.
  index.Clear();
  EXPECT_EQ(index.prefix_ordered_keys(), 0u);
  EXPECT_EQ(UnderPrefix(index, hints), Keys{});
  for (const std::string& key : std::vector<std::string>{"q", "p/c", hints + "d", "p/a"}) {
    index.Insert(Ref(key));
  }
  EXPECT_EQ(UnderPrefix(index, "p/"), (Keys{"p/a", "p/c"}));
  EXPECT_EQ(UnderPrefix(index, hints), (Keys{hints + "d"}));
  EXPECT_EQ(UnderPrefix(index, auth), Keys{});
  EXPECT_EQ(index.prefix_ordered_keys(), 3u);
}

TEST(KeyIndexTest, ExpiriesAreKeptBesideTheSlabOnlyWhereEntriesHaveThem) {
  KeyIndex index;
  constexpr int kKeys = 3 * 4096 + 100;  // four slab chunks
  std::vector<uint32_t> ids;
  for (int i = 0; i < kKeys; ++i) ids.push_back(index.Insert(Ref(absl::StrCat("key:", i))));
  const size_t without = index.overhead_bytes();
  for (const uint32_t id : ids) {
    ASSERT_EQ(index.expiry(id), 0);
    ASSERT_EQ(index.at(id).flags & kEntryHasExpiry, 0);
  }
  // One key in every chunk with an expiry: a chunk of expiries each.
  for (int i = 0; i < kKeys; i += 4096) index.set_expiry(ids[i], 1000 + i);
  const size_t with = index.overhead_bytes();
  EXPECT_EQ(with - without, 4 * 4096 * sizeof(int64_t));
  EXPECT_EQ(index.with_expiry(), 4u);
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_EQ(index.expiry(ids[i]), i % 4096 == 0 ? 1000 + i : 0) << i;
    ASSERT_EQ((index.at(ids[i]).flags & kEntryHasExpiry) != 0, i % 4096 == 0) << i;
  }
  // Changed, then cleared: the chunk goes with its last expiry.
  index.set_expiry(ids[0], 7);
  EXPECT_EQ(index.expiry(ids[0]), 7);
  EXPECT_EQ(index.overhead_bytes(), with);
  index.set_expiry(ids[0], 0);
  EXPECT_EQ(index.expiry(ids[0]), 0);
  EXPECT_EQ(index.at(ids[0]).flags & kEntryHasExpiry, 0);
  EXPECT_EQ(with - index.overhead_bytes(), 4096 * sizeof(int64_t));
  index.set_expiry(ids[0], 0);  // clearing twice changes nothing
  EXPECT_EQ(with - index.overhead_bytes(), 4096 * sizeof(int64_t));
  EXPECT_EQ(index.with_expiry(), 3u);
  // A removed entry's expiry goes with it; its id, reused, has none.
  const std::string removed = absl::StrCat("key:", 4096);
  index.Remove(ids[4096]);
  EXPECT_EQ(index.with_expiry(), 2u);
  const size_t removed_at = index.overhead_bytes();  // the chunk of expiries went with it:
  index.set_expiry(ids[4097], 5);                    // a new one for its neighbour
  EXPECT_EQ(index.overhead_bytes() - removed_at, 4096 * sizeof(int64_t));
  index.set_expiry(ids[4097], 0);
  EXPECT_EQ(index.overhead_bytes(), removed_at);
  const uint32_t reused = index.Insert(Ref("new key"));
  EXPECT_EQ(reused, ids[4096]);
  EXPECT_EQ(index.expiry(reused), 0);
  EXPECT_EQ(index.Find(Ref(removed)), KeyIndex::kNoEntry);
  // Other flags do not disturb it, nor does setting the record's flags.
  index.at(ids[8192]).flags |= kEntryTombstone;
  EXPECT_EQ(index.expiry(ids[8192]), 1000 + 8192);
  index.at(ids[8192]).set_record_flags(0);
  EXPECT_EQ(index.at(ids[8192]).flags, kEntryHasExpiry);
  EXPECT_EQ(index.expiry(ids[8192]), 1000 + 8192);
  index.at(ids[0]).set_record_flags(kEntryTombstone | kEntryHasExpiry);  // not the bit's owner
  EXPECT_EQ(index.at(ids[0]).flags, kEntryTombstone);
  EXPECT_EQ(index.with_expiry(), 2u);
}

}  // namespace
}  // namespace logkv::engine
