#include "engine/key_index.h"

#include <cassert>
#include <cmath>
#include <array>
#include <cstring>
#include <tuple>

#include "engine/log_record.h"

namespace logkv::engine {

namespace {

// Bytes [offset, offset + 8) of key as a big-endian number, zero-padded past
// its end: comparing two such numbers compares those bytes as unsigned.
uint64_t ChunkAt(absl::string_view key, size_t offset) {
  uint64_t chunk = 0;
  for (size_t i = 0; i < 8; ++i) {
    const size_t at = offset + i;
    chunk = (chunk << 8) | (at < key.size() ? static_cast<uint8_t>(key[at]) : 0);
  }
  return chunk;
}

struct SortItem {
  uint64_t chunk;  // ChunkAt(key, the offset being sorted on)
  uint32_t id;
  uint32_t key_size;
};

}  // namespace

KeyIndex::KeyIndex(int group_bits, std::vector<std::string> ordered_prefixes)
    : group_bits_(std::clamp(group_bits, 0, kMaxGroupBits)),
      order_(KeyLess{this}, CountingAllocator<uint32_t>(&order_bytes_)),
      ordered_prefixes_(std::move(ordered_prefixes)),
      prefix_order_(KeyLess{this}, CountingAllocator<uint32_t>(&order_bytes_)) {
  for (const std::string& prefix : ordered_prefixes_) {
    assert(!prefix.empty());
    if (!prefix.empty()) ordered_first_bytes_[static_cast<uint8_t>(prefix[0])] = true;
  }
  tables_.reserve(size_t{1} << group_bits_);
  for (size_t i = 0; i < (size_t{1} << group_bits_); ++i) {
    tables_.emplace_back(0, Hash{this}, Equal{this});
  }
}

size_t KeyIndex::Hash::operator()(uint32_t id) const {
  return TableHash(HashKey(index->at(id).key()));
}

uint32_t KeyIndex::Find(const KeyRef& key) const {
  const Table& table = tables_[GroupOf(key.hash)];
  auto it = table.find(key);
  return it == table.end() ? kNoEntry : *it;
}

void KeyIndex::ForEachCandidate(const KeyRef& key,
                                absl::FunctionRef<void(uint32_t id)> visit) const {
  // The probe's comparisons all answer false, so find walks the probe to its
  // end (the first group with an empty slot, nearly always the first group)
  // and calls visit for every id whose control byte matches.
  const Table& table = tables_[GroupOf(key.hash)];
  const bool found = table.find(CandidateProbe{key.hash, visit}) != table.end();
  assert(!found);
  (void)found;
}

uint32_t KeyIndex::AllocateId() {
  if (!free_ids_.empty()) {
    uint32_t id = free_ids_.back();
    free_ids_.pop_back();
    return id;
  }
  assert(next_id_ != kNoEntry);
  if ((next_id_ >> kChunkShift) == chunks_.size()) {
    chunks_.push_back(std::make_unique_for_overwrite<IndexEntry[]>(kChunkEntries));
    expiry_chunks_.emplace_back();
  }
  return next_id_++;
}

uint32_t KeyIndex::TryInsert(const KeyRef& key) {
  // One probe: the entry is made only where the table has no such key.
  uint32_t id = kNoEntry;
  tables_[GroupOf(key.hash)].lazy_emplace(key, [&](const auto& construct) {
    id = AllocateId();
    IndexEntry& entry = at(id);
    std::memset(&entry, 0, sizeof(entry));
    entry.key_data = arena_.Store(key.key);
    entry.key_size = static_cast<uint16_t>(key.key.size());
    construct(id);
  });
  if (id == kNoEntry) return kNoEntry;
  ++size_;
  if (ordered_) order_.insert(id);
  if (UnderOrderedPrefix(key.key)) prefix_order_.insert(id);
  return id;
}

uint32_t KeyIndex::Insert(const KeyRef& key) {
  const uint32_t id = TryInsert(key);
  assert(id != kNoEntry);
  return id;
}

void KeyIndex::set_expiry(uint32_t id, int64_t expiry_unix_ms) {
  IndexEntry& entry = at(id);
  ExpiryChunk& chunk = expiry_chunks_[id >> kChunkShift];
  if (expiry_unix_ms == 0) {
    if ((entry.flags & kEntryHasExpiry) == 0) return;
    entry.flags &= static_cast<uint8_t>(~kEntryHasExpiry);
    chunk.values[id & kChunkMask] = 0;
    --with_expiry_;
    if (--chunk.count == 0) chunk.values.reset();
    return;
  }
  if ((entry.flags & kEntryHasExpiry) == 0) {
    entry.flags |= kEntryHasExpiry;
    ++with_expiry_;
    if (chunk.count++ == 0) chunk.values = std::make_unique<int64_t[]>(kChunkEntries);
  }
  chunk.values[id & kChunkMask] = expiry_unix_ms;
}

void KeyIndex::Remove(uint32_t id) {
  set_expiry(id, 0);
  IndexEntry& entry = at(id);
  const uint64_t hash = HashKey(entry.key());
  if (ordered_) {
    const size_t unordered = order_.erase(id);
    assert(unordered == 1);
    (void)unordered;
  }
  if (UnderOrderedPrefix(entry.key())) {
    const size_t unordered = prefix_order_.erase(id);
    assert(unordered == 1);
    (void)unordered;
  }
  const size_t erased = tables_[GroupOf(hash)].erase(KeyRef{entry.key(), hash});
  assert(erased == 1);
  (void)erased;
  --size_;
  arena_.Release(entry.key_size);
  entry.key_data = nullptr;
  entry.key_size = 0;
  free_ids_.push_back(id);
  RebuildArenaIfWasteful();
}

void KeyIndex::RebuildArenaIfWasteful() {
  // Keys of removed entries stay in the arena as garbage. Once garbage is
  // most of it, copy the live keys into a fresh arena: O(keys) now and then,
  // so memory follows the live key set instead of every key ever written.
  // The key bytes do not change, so neither the tables nor the order move.
  const size_t allocated = arena_.allocated_bytes();
  const size_t live = arena_.live_bytes();
  if (allocated < 4 * KeyArena::kBlockBytes || live * 2 > allocated) return;
  KeyArena fresh;
  for (uint32_t chunk = 0; chunk < chunks_.size(); ++chunk) {
    IndexEntry* entries = chunks_[chunk].get();
    const uint32_t count = std::min(kChunkEntries, next_id_ - (chunk << kChunkShift));
    for (uint32_t i = 0; i < count; ++i) {
      if (entries[i].key_data != nullptr) entries[i].key_data = fresh.Store(entries[i].key());
    }
  }
  arena_ = std::move(fresh);
}

void KeyIndex::BuildOrder() {
  if (ordered_) return;
  // Sorting ids with KeyLess would read two random keys per comparison.
  // Instead sort (8 key bytes, id) pairs, which sit together in memory, and
  // only within a run of equal bytes read the next 8 bytes of those keys:
  // a key is read once per 8 bytes of prefix it shares with another.
  std::vector<SortItem> items;
  items.reserve(size_);
  ForEach([&](uint32_t id, const IndexEntry& entry) {
    items.push_back(SortItem{ChunkAt(entry.key(), 0), id, entry.key_size});
  });
  std::vector<std::tuple<size_t, size_t, size_t>> todo;  // [begin, end) sorted from offset
  todo.emplace_back(0, items.size(), 0);
  while (!todo.empty()) {
    const size_t begin = std::get<0>(todo.back());
    const size_t end = std::get<1>(todo.back());
    const size_t offset = std::get<2>(todo.back());
    todo.pop_back();
    SortItem* const first = items.data() + begin;
    SortItem* const last = items.data() + end;
    std::sort(first, last, [](const SortItem& a, const SortItem& b) { return a.chunk < b.chunk; });
    for (SortItem* run = first; run != last;) {
      SortItem* run_end = run + 1;
      while (run_end != last && run_end->chunk == run->chunk) ++run_end;
      if (run_end - run > 1) {
        // Equal bytes up to offset + 8. A key that ends there is a prefix of
        // every longer one (its padding equals their bytes): shorter first.
        SortItem* longer = std::partition(
            run, run_end, [&](const SortItem& item) { return item.key_size <= offset + 8; });
        std::sort(run, longer,
                  [](const SortItem& a, const SortItem& b) { return a.key_size < b.key_size; });
        if (run_end - longer > 1) {
          for (SortItem* item = longer; item != run_end; ++item) {
            item->chunk = ChunkAt(at(item->id).key(), offset + 8);
          }
          todo.emplace_back(longer - items.data(), run_end - items.data(), offset + 8);
        }
      }
      run = run_end;
    }
  }
  order_.clear();
  // In order, each insert lands at the end: O(1), and the nodes fill up.
  // (An insert whose hint is wrong still goes to its place: the order never
  // depends on the sort above being right, only the build's speed does.)
  for (const SortItem& item : items) order_.insert(order_.end(), item.id);
  ordered_ = true;
}

void KeyIndex::Clear() {
  for (Table& table : tables_) Table(0, Hash{this}, Equal{this}).swap(table);
  order_.clear();
  ordered_ = false;
  prefix_order_.clear();
  chunks_.clear();
  expiry_chunks_.clear();
  with_expiry_ = 0;
  next_id_ = 0;
  free_ids_.clear();
  arena_ = KeyArena();
  size_ = 0;
}

void KeyIndex::Reserve(size_t n) {
  // Each group gets its share and a margin for the spread of a binomial
  // draw (about four standard deviations), so that none rehashes.
  const double share = static_cast<double>(n) / static_cast<double>(tables_.size());
  const size_t per_table = static_cast<size_t>(share + 4 * std::sqrt(share) + 16);
  for (Table& table : tables_) table.reserve(per_table);
  chunks_.reserve((n + kChunkEntries - 1) >> kChunkShift);
  expiry_chunks_.reserve(chunks_.capacity());
}

void KeyIndex::ShrinkToFit() {
  // absl keeps a table at most 7/8 full, in capacities of 2^k - 1. When the
  // tables hold more than 1.5 times the slots their entries need (a Reserve
  // that counted overwritten records as keys), they are built again at the
  // size they need. Not by rehashing: that reads every entry and key in the
  // table's order, two cache misses a key. The slab is read front to back
  // instead (and the arena mostly so), each key hashed, and its new slot
  // prefetched a few entries ahead.
  size_t capacity = 0;
  size_t needed = 0;
  std::vector<size_t> sizes;
  sizes.reserve(tables_.size());
  for (const Table& table : tables_) {
    capacity += table.capacity();
    needed += std::bit_ceil(table.size() + table.size() / 7 + 1) - 1;
    sizes.push_back(table.size());
  }
  if (capacity * 2 <= needed * 3) return;
  for (size_t group = 0; group < tables_.size(); ++group) {
    tables_[group] = Table(0, Hash{this}, Equal{this});
    tables_[group].reserve(sizes[group]);
  }
  constexpr size_t kAhead = 16;
  std::array<KeyRef, kAhead> pending;
  std::array<uint32_t, kAhead> pending_ids;
  size_t count = 0;
  auto insert = [&](size_t i) {
    const uint32_t id = pending_ids[i];
    tables_[GroupOf(pending[i].hash)].lazy_emplace(
        pending[i], [id](const auto& construct) { construct(id); });
  };
  ForEach([&](uint32_t id, const IndexEntry& entry) {
    const size_t slot = count % kAhead;
    if (count >= kAhead) insert(slot);
    pending[slot] = KeyRef{entry.key(), HashKey(entry.key())};
    pending_ids[slot] = id;
    tables_[GroupOf(pending[slot].hash)].prefetch(pending[slot]);
    ++count;
  });
  for (size_t i = count > kAhead ? count - kAhead : 0; i < count; ++i) insert(i % kAhead);
}

size_t KeyIndex::overhead_bytes() const {
  size_t table_bytes = tables_.capacity() * sizeof(Table);
  for (const Table& table : tables_) table_bytes += table.capacity() * (sizeof(uint32_t) + 1);
  size_t slab_bytes = chunks_.size() * kChunkEntries * sizeof(IndexEntry) +
                      expiry_chunks_.capacity() * sizeof(ExpiryChunk);
  for (const ExpiryChunk& chunk : expiry_chunks_) {
    if (chunk.values != nullptr) slab_bytes += kChunkEntries * sizeof(int64_t);
  }
  const size_t free_list_bytes = free_ids_.capacity() * sizeof(uint32_t);
  const size_t arena_waste = arena_.allocated_bytes() - arena_.live_bytes();
  return table_bytes + slab_bytes + free_list_bytes + arena_waste + order_bytes_;
}

}  // namespace logkv::engine
