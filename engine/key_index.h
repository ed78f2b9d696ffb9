// The in-memory hash index of one shard: key -> newest record of the key.
//
// Layout, chosen for bytes per key: entries live in a chunked slab and are
// named by a 32-bit id; the hash table stores only ids (4 bytes + 1 control
// byte a slot), hashing and comparing through the slab; key bytes live in a
// KeyArena. The key's XXH3 hash, computed once per operation, is passed in
// (KeyRef) so no lookup hashes twice.
//
// Thread-safety: none; the owning shard's mutex guards it.
#ifndef LOGKV_ENGINE_KEY_INDEX_H_
#define LOGKV_ENGINE_KEY_INDEX_H_

#include <algorithm>
#include <bit>
#include <cstdint>
#include <memory>

#include <vector>

#include "absl/strings/string_view.h"
#include "absl/container/flat_hash_set.h"
#include "engine/arena.h"

namespace logkv::engine {

// Where a record lives.
struct RecordLocation {
  uint32_t segment_id = 0;
  uint32_t offset = 0;
  uint32_t record_bytes = 0;

  bool operator==(const RecordLocation&) const = default;
};

// Entry flags.
inline constexpr uint8_t kEntryTombstone = 1 << 0;  // newest record is a Delete
inline constexpr uint8_t kEntryExpired = 1 << 1;    // newest record is a Put the sweeper expired
// The expired record's bytes are already counted dead in its segment (set by
// the sweeper, cleared when compaction rewrites the record).
inline constexpr uint8_t kEntryShadowCounted = 1 << 2;
// Recovery only: the newest record is a Forget; the entry is removed once
// every segment is loaded (an older record read later must not revive it).
inline constexpr uint8_t kEntryForgotten = 1 << 3;

struct IndexEntry {
  const char* key_data;  // in the arena; key_size bytes
  uint32_t segment_id;
  uint32_t offset;
  uint32_t record_bytes;
  uint16_t key_size;
  uint8_t flags;
  uint8_t unused;
  uint64_t timestamp;
  uint64_t version;
  int64_t expiry_unix_ms;

  absl::string_view key() const { return {key_data, key_size}; }
  RecordLocation location() const { return {segment_id, offset, record_bytes}; }
  void set_location(const RecordLocation& l) {
    segment_id = l.segment_id;
    offset = l.offset;
    record_bytes = l.record_bytes;
  }
  // A key a reader can see (ignoring expiry, which depends on the time).
  bool present() const { return (flags & (kEntryTombstone | kEntryExpired)) == 0; }
};
static_assert(sizeof(IndexEntry) == 48, "bytes per key are budgeted; see docs/performance.md");

struct KeyRef {
  absl::string_view key;
  uint64_t hash;  // HashKey(key)
};

class KeyIndex {
 public:
  static constexpr uint32_t kNoEntry = UINT32_MAX;

  KeyIndex();
  KeyIndex(const KeyIndex&) = delete;
  KeyIndex& operator=(const KeyIndex&) = delete;

  uint32_t Find(const KeyRef& key) const;
  // Starts loading the table memory a Find or Insert of key will read.
  void Prefetch(const KeyRef& key) const { table_.prefetch(key); }
  // REQUIRES: Find(key) == kNoEntry. Returns the new entry's id; its fields
  // other than the key are zero.
  uint32_t Insert(const KeyRef& key);
  void Remove(uint32_t id);

  // Whether id names an entry now (ids of removed entries are reused later).
  bool contains_id(uint32_t id) const { return id < next_id_ && at(id).key_data != nullptr; }

  IndexEntry& at(uint32_t id) { return chunks_[id >> kChunkShift][id & kChunkMask]; }
  const IndexEntry& at(uint32_t id) const { return chunks_[id >> kChunkShift][id & kChunkMask]; }

  size_t size() const { return table_.size(); }
  // Every id handed out so far is below it.
  uint32_t id_limit() const { return next_id_; }
  // Calls f(id, entry) for every entry, in id order: the slab (and, for
  // entries inserted together, the arena) is read sequentially, where the
  // table's order would jump to a random entry and key every step, which at
  // millions of keys is a cache miss or two each.
  template <typename F>
  void ForEach(F&& f) const {
    for (uint32_t chunk = 0; chunk < chunks_.size(); ++chunk) {
      const IndexEntry* entries = chunks_[chunk].get();
      const uint32_t first = chunk << kChunkShift;
      const uint32_t count = std::min(kChunkEntries, next_id_ - first);
      for (uint32_t i = 0; i < count; ++i) {
        if (entries[i].key_data != nullptr) f(first + i, entries[i]);
      }
    }
  }

  // Makes room for n entries, so that loading them never rehashes (a rehash
  // reads every entry's key again to hash it).
  void Reserve(size_t n);
  // Gives back table capacity well beyond the entries held (after a Reserve
  // that over-estimated).
  void ShrinkToFit();

  size_t key_bytes() const { return arena_.live_bytes(); }
  // Memory the index uses beyond the live key bytes.
  size_t overhead_bytes() const;

 private:
  static constexpr uint32_t kChunkShift = 12;
  static constexpr uint32_t kChunkEntries = 1u << kChunkShift;
  static constexpr uint32_t kChunkMask = kChunkEntries - 1;

  // The table hashes with the rotated XXH3 so that its low bits (absl's H2
  // control byte) are independent of the bits that chose the shard.
  static size_t TableHash(uint64_t key_hash) { return std::rotr(key_hash, 32); }

  struct Hash {
    using is_transparent = void;
    const KeyIndex* index;
    size_t operator()(uint32_t id) const;
    size_t operator()(const KeyRef& ref) const { return TableHash(ref.hash); }
  };
  struct Equal {
    using is_transparent = void;
    const KeyIndex* index;
    bool operator()(uint32_t a, uint32_t b) const { return a == b; }
    bool operator()(uint32_t id, const KeyRef& ref) const { return index->at(id).key() == ref.key; }
    bool operator()(const KeyRef& ref, uint32_t id) const { return index->at(id).key() == ref.key; }
  };

  uint32_t AllocateId();
  void RebuildArenaIfWasteful();

  std::vector<std::unique_ptr<IndexEntry[]>> chunks_;
  uint32_t next_id_ = 0;        // ids below it have been handed out
  std::vector<uint32_t> free_ids_;
  KeyArena arena_;
  absl::flat_hash_set<uint32_t, Hash, Equal> table_;
};

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_KEY_INDEX_H_
