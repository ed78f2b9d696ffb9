// The in-memory hash index of one shard: key -> newest record of the key.
//
// Layout, chosen for bytes per key: entries live in a chunked slab and are
// named by a 32-bit id; the hash tables store only ids (4 bytes + 1 control
// byte a slot), hashing and comparing through the slab; key bytes live in a
// KeyArena. The key's XXH3 hash, computed once per operation, is passed in
// (KeyRef) so no lookup hashes twice.
//
// Two views besides lookup by key, both kept up to date by Insert and Remove:
// - Groups: the table is split by the top bits of the key hash (the bits of
//   the Merkle partition), one table per group, so the keys of one Merkle
//   partition are found by walking its group's table alone (ForEachInGroup),
//   not the whole index. No byte per key: the split tables hold the same ids.
// - Key order: a B-tree of ids ordered by key bytes (4 bytes a key plus node
//   slack), so a Scan page starts with a seek instead of a pass over every
//   key. It is built on first use (BuildOrder, from the keys sorted by their
//   bytes eight at a time) and kept from then on. Its comparisons read keys
//   through the slab, two cache misses each, so keeping it makes an insert
//   of a new key several times dearer: a store that is never scanned (an
//   embedder, engine_bench) does not pay for it. The keys under the
//   ordered prefixes the index is made with (a server's own few keys) are
//   kept in an order of their own from the start, so that a scan of one of
//   those prefixes never walks, nor orders, the rest.
//
// Thread-safety: none; the owning shard's mutex guards it.
#ifndef LOGKV_ENGINE_KEY_INDEX_H_
#define LOGKV_ENGINE_KEY_INDEX_H_

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/string_view.h"
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
// The newest record has an expiry (KeyIndex::expiry). Set and cleared by
// KeyIndex::set_expiry only.
inline constexpr uint8_t kEntryHasExpiry = 1 << 4;

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

  absl::string_view key() const { return {key_data, key_size}; }
  RecordLocation location() const { return {segment_id, offset, record_bytes}; }
  // Sets the flags but kEntryHasExpiry, which KeyIndex::set_expiry owns.
  void set_record_flags(uint8_t record_flags) {
    flags = static_cast<uint8_t>((flags & kEntryHasExpiry) | (record_flags & ~kEntryHasExpiry));
  }
  void set_location(const RecordLocation& l) {
    segment_id = l.segment_id;
    offset = l.offset;
    record_bytes = l.record_bytes;
  }
  // A key a reader can see (ignoring expiry, which depends on the time).
  bool present() const { return (flags & (kEntryTombstone | kEntryExpired)) == 0; }
};
static_assert(sizeof(IndexEntry) == 40, "bytes per key are budgeted; see docs/performance.md");

struct KeyRef {
  absl::string_view key;
  uint64_t hash;  // HashKey(key)
};

class KeyIndex {
 public:
  static constexpr uint32_t kNoEntry = UINT32_MAX;

  // At most this many hash bits choose a key's group (256 tables a shard).
  static constexpr int kMaxGroupBits = 8;

  // group_bits: how many top bits of the key hash choose the table (capped
  // at kMaxGroupBits); the shard passes the Merkle partition bits.
  // ordered_prefixes: keys under these (non-empty) prefixes are kept in an
  // order of their own from the first insert (PrefixOrderedFrom).
  explicit KeyIndex(int group_bits = 0, std::vector<std::string> ordered_prefixes = {});
  KeyIndex(const KeyIndex&) = delete;
  KeyIndex& operator=(const KeyIndex&) = delete;

  uint32_t Find(const KeyRef& key) const;
  // Starts loading the table memory a Find or Insert of key will read.
  void Prefetch(const KeyRef& key) const { tables_[GroupOf(key.hash)].prefetch(key); }
  // Calls visit(id) for each entry a Find of key would compare its key with
  // (the ids in its probe whose control bits match the hash: the key's own
  // entry if it has one, now and then another), without reading any entry or
  // key. Start-up uses it to load, ahead of a Find, the memory that Find's
  // comparisons read: after Prefetch the probe's table memory is cached, so
  // this costs no cache miss itself, and visit prefetches the entries; a
  // second call a few records later, with the entries cached, prefetches
  // their keys. visit must not change the index.
  void ForEachCandidate(const KeyRef& key, absl::FunctionRef<void(uint32_t id)> visit) const;
  // REQUIRES: Find(key) == kNoEntry. Returns the new entry's id; its fields
  // other than the key are zero.
  uint32_t Insert(const KeyRef& key);
  // Insert where the key is absent; kNoEntry, and nothing changed, where it
  // is present.
  uint32_t TryInsert(const KeyRef& key);
  void Remove(uint32_t id);

  // Whether id names an entry now (ids of removed entries are reused later).
  bool contains_id(uint32_t id) const { return id < next_id_ && at(id).key_data != nullptr; }

  IndexEntry& at(uint32_t id) { return chunks_[id >> kChunkShift][id & kChunkMask]; }
  const IndexEntry& at(uint32_t id) const { return chunks_[id >> kChunkShift][id & kChunkMask]; }

  // The expiry of an entry's newest record (unix ms; 0: none). Expiries
  // live beside the slab, not in the entry: in chunks of the slab's size,
  // each allocated while some entry of its slab chunk has an expiry, so a
  // store without TTLs pays nothing for them and one with a TTL on every
  // key 8 bytes a key, as in the entry. The entry's kEntryHasExpiry flag
  // says whether to look, so a key without one costs no second cache miss.
  int64_t expiry(uint32_t id) const {
    if ((at(id).flags & kEntryHasExpiry) == 0) return 0;
    return expiry_chunks_[id >> kChunkShift].values[id & kChunkMask];
  }
  // Sets (or, with 0, clears) the expiry and the entry's flag.
  void set_expiry(uint32_t id, int64_t expiry_unix_ms);
  // Entries with an expiry.
  size_t with_expiry() const { return with_expiry_; }

  size_t size() const { return size_; }
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

  // Calls f(id, entry) for every entry in the order of the tables' slots,
  // group by group (what LocalityOf orders): entries inserted in this order
  // into tables of the same size fill each table front to back.
  template <typename F>
  void ForEachInSlotOrder(F&& f) const {
    for (const Table& table : tables_) {
      for (const uint32_t id : table) f(id, at(id));
    }
  }
  // Removes every entry and gives back the memory (the group count stays).
  void Clear();

  // Where a lookup of the key starts probing, as a fraction of the tables'
  // memory, most significant bits first. Lookups in the order of this number
  // walk each table front to back (absl probes from (hash >> 7) & capacity,
  // XORed with a per-table salt that permutes aligned blocks, so the walk
  // stays within a block at a time), where the keys' own order jumps to a
  // random slot every time: at millions of keys a cache and a TLB miss each.
  // Only a matter of speed: any order finds the same entries.
  uint64_t LocalityOf(uint64_t key_hash) const {
    const uint32_t group = GroupOf(key_hash);
    const uint64_t capacity = tables_[group].capacity();  // 2^k - 1, or 0
    const int k = std::bit_width(capacity);
    const uint64_t position = (TableHash(key_hash) >> 7) & capacity;
    const uint64_t fraction = k == 0 ? 0 : position << (64 - k);
    return group_bits_ == 0 ? fraction
                            : (uint64_t{group} << (64 - group_bits_)) | (fraction >> group_bits_);
  }

  // Slots in all the tables (what LocalityOf orders).
  size_t table_slots() const {
    size_t slots = 0;
    for (const Table& table : tables_) slots += table.capacity();
    return slots;
  }

  // The group of a key hash; groups() of them.
  uint32_t GroupOf(uint64_t hash) const {
    return group_bits_ == 0 ? 0 : static_cast<uint32_t>(hash >> (64 - group_bits_));
  }
  uint32_t groups() const { return static_cast<uint32_t>(tables_.size()); }
  int group_bits() const { return group_bits_; }
  // Calls f(id, entry) for every entry of one group, in id order: the
  // table's order would jump to a random entry and key every step, where
  // ids in order read the slab (and mostly the arena) front to back.
  template <typename F>
  void ForEachInGroup(uint32_t group, F&& f) const {
    std::vector<uint32_t> ids(tables_[group].begin(), tables_[group].end());
    std::sort(ids.begin(), ids.end());
    for (const uint32_t id : ids) f(id, at(id));
  }

  // Key order. Compares ids by their keys' bytes (unsigned, shorter first on
  // a common prefix); a key given as a string_view is compared the same way.
  struct KeyLess {
    using is_transparent = void;
    const KeyIndex* index;
    bool operator()(uint32_t a, uint32_t b) const { return index->at(a).key() < index->at(b).key(); }
    bool operator()(uint32_t a, absl::string_view b) const { return index->at(a).key() < b; }
    bool operator()(absl::string_view a, uint32_t b) const { return a < index->at(b).key(); }
  };
  // Counts the bytes the B-tree allocates, for overhead_bytes().
  template <typename T>
  struct CountingAllocator {
    using value_type = T;
    size_t* bytes;
    explicit CountingAllocator(size_t* counter) : bytes(counter) {}
    template <typename U>
    CountingAllocator(const CountingAllocator<U>& other) : bytes(other.bytes) {}  // NOLINT
    T* allocate(size_t n) {
      *bytes += n * sizeof(T);
      return std::allocator<T>().allocate(n);
    }
    void deallocate(T* p, size_t n) {
      *bytes -= n * sizeof(T);
      std::allocator<T>().deallocate(p, n);
    }
    template <typename U>
    bool operator==(const CountingAllocator<U>& other) const { return bytes == other.bytes; }
  };
  using OrderedIds = absl::btree_set<uint32_t, KeyLess, CountingAllocator<uint32_t>>;
  using OrderedIterator = OrderedIds::const_iterator;
  // Until BuildOrder, Insert and Remove leave the key order alone; from
  // then on they keep it. BuildOrder builds it from every entry (O(keys)
  // cache misses plus a sort; nothing when already built).
  void BuildOrder();
  bool ordered() const { return ordered_; }
  // REQUIRES: ordered(). The first id whose key is >= key (> key when
  // after), and the end.
  OrderedIterator OrderedFrom(absl::string_view key, bool after) const {
    return after ? order_.upper_bound(key) : order_.lower_bound(key);
  }
  OrderedIterator OrderedEnd() const { return order_.end(); }

  // The keys under the ordered prefixes the index was made with are kept in
  // an order of their own whether or not the whole order is built: each
  // insert and removal of one updates it. A scan whose prefix lies under one
  // of them reads only those keys, where without it a store never ordered
  // walks every key a page (or builds the whole order). For small namespaces
  // (a server's own keys), read at every start.
  bool UnderOrderedPrefix(absl::string_view key) const {
    if (key.empty() || !ordered_first_bytes_[static_cast<uint8_t>(key[0])]) return false;
    for (const std::string& prefix : ordered_prefixes_) {
      if (key.substr(0, prefix.size()) == prefix) return true;
    }
    return false;
  }
  // REQUIRES: UnderOrderedPrefix(key), or key is before every key under the
  // prefix scanned. The first such id whose key is >= key (> key when
  // after), and the end.
  OrderedIterator PrefixOrderedFrom(absl::string_view key, bool after) const {
    return after ? prefix_order_.upper_bound(key) : prefix_order_.lower_bound(key);
  }
  OrderedIterator PrefixOrderedEnd() const { return prefix_order_.end(); }
  // How many keys are under the ordered prefixes.
  size_t prefix_ordered_keys() const { return prefix_order_.size(); }

  // Makes room for n entries, so that loading them never rehashes (a rehash
  // reads every entry's key again to hash it).
  void Reserve(size_t n);
  // Builds the tables again at the size their entries need when they hold
  // over 1.5 times that (after a Reserve that over-estimated), from the slab
  // in id order. O(entries); the key order is not touched.
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

  // A lookup that matches nothing and shows visit every id it would have
  // compared (ForEachCandidate).
  struct CandidateProbe {
    uint64_t hash;
    absl::FunctionRef<void(uint32_t id)> visit;
  };

  struct Hash {
    using is_transparent = void;
    const KeyIndex* index;
    size_t operator()(uint32_t id) const;
    size_t operator()(const KeyRef& ref) const { return TableHash(ref.hash); }
    size_t operator()(const CandidateProbe& probe) const { return TableHash(probe.hash); }
  };
  struct Equal {
    using is_transparent = void;
    const KeyIndex* index;
    bool operator()(uint32_t a, uint32_t b) const { return a == b; }
    bool operator()(uint32_t id, const KeyRef& ref) const { return index->at(id).key() == ref.key; }
    bool operator()(const KeyRef& ref, uint32_t id) const { return index->at(id).key() == ref.key; }
    bool operator()(uint32_t id, const CandidateProbe& probe) const {
      probe.visit(id);
      return false;
    }
    bool operator()(const CandidateProbe& probe, uint32_t id) const {
      probe.visit(id);
      return false;
    }
  };

  using Table = absl::flat_hash_set<uint32_t, Hash, Equal>;

  uint32_t AllocateId();
  void RebuildArenaIfWasteful();

  // The expiries of one slab chunk's entries (values is null while none has one).
  struct ExpiryChunk {
    std::unique_ptr<int64_t[]> values;
    uint32_t count = 0;  // entries of the chunk with an expiry
  };

  const int group_bits_;
  std::vector<std::unique_ptr<IndexEntry[]>> chunks_;
  std::vector<ExpiryChunk> expiry_chunks_;  // by slab chunk, as many
  size_t with_expiry_ = 0;                  // the chunks' counts summed
  uint32_t next_id_ = 0;        // ids below it have been handed out
  std::vector<uint32_t> free_ids_;
  KeyArena arena_;
  std::vector<Table> tables_;  // by group
  size_t size_ = 0;            // entries in all tables
  size_t order_bytes_ = 0;     // what order_'s and prefix_order_'s nodes take
  bool ordered_ = false;       // order_ holds every entry (and is kept)
  OrderedIds order_;
  // The keys under ordered_prefixes_ (UnderOrderedPrefix), always kept.
  const std::vector<std::string> ordered_prefixes_;
  std::array<bool, 256> ordered_first_bytes_{};
  OrderedIds prefix_order_;
};

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_KEY_INDEX_H_
