// KeyIndex's lookups without comparing keys (ForEachCandidate), which
// start-up uses to prefetch what a lookup a few records later reads: every
// id it shows is one a Find would have compared, a present key's own entry
// is always among them, and it changes nothing in the index.
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

}  // namespace
}  // namespace logkv::engine
