#include "engine/key_index.h"

#include <cassert>
#include <cstring>

#include "engine/log_record.h"

namespace logkv::engine {

KeyIndex::KeyIndex() : table_(0, Hash{this}, Equal{this}) {}

size_t KeyIndex::Hash::operator()(uint32_t id) const {
  return TableHash(HashKey(index->at(id).key()));
}

uint32_t KeyIndex::Find(const KeyRef& key) const {
  auto it = table_.find(key);
  return it == table_.end() ? kNoEntry : *it;
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
  }
  return next_id_++;
}

uint32_t KeyIndex::Insert(const KeyRef& key) {
  assert(Find(key) == kNoEntry);
  const uint32_t id = AllocateId();
  IndexEntry& entry = at(id);
  std::memset(&entry, 0, sizeof(entry));
  entry.key_data = arena_.Store(key.key);
  entry.key_size = static_cast<uint16_t>(key.key.size());
  table_.lazy_emplace(key, [id](const auto& construct) { construct(id); });
  return id;
}

void KeyIndex::Remove(uint32_t id) {
  IndexEntry& entry = at(id);
  const size_t erased = table_.erase(KeyRef{entry.key(), HashKey(entry.key())});
  assert(erased == 1);
  (void)erased;
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
  const size_t allocated = arena_.allocated_bytes();
  const size_t live = arena_.live_bytes();
  if (allocated < 4 * KeyArena::kBlockBytes || live * 2 > allocated) return;
  KeyArena fresh;
  for (uint32_t id : table_) {
    IndexEntry& entry = at(id);
    entry.key_data = fresh.Store(entry.key());
  }
  arena_ = std::move(fresh);
}

void KeyIndex::Reserve(size_t n) {
  table_.reserve(n);
  chunks_.reserve((n + kChunkEntries - 1) >> kChunkShift);
}

void KeyIndex::ShrinkToFit() {
  // absl keeps the table at most 7/8 full; a table more than four times
  // larger than that needs is one a Reserve over-estimated.
  if (table_.capacity() / 4 > table_.size() + table_.size() / 7 + 16) table_.rehash(0);
}

size_t KeyIndex::overhead_bytes() const {
  const size_t table_bytes = table_.capacity() * (sizeof(uint32_t) + 1);
  const size_t slab_bytes = chunks_.size() * kChunkEntries * sizeof(IndexEntry);
  const size_t free_list_bytes = free_ids_.capacity() * sizeof(uint32_t);
  const size_t arena_waste = arena_.allocated_bytes() - arena_.live_bytes();
  return table_bytes + slab_bytes + free_list_bytes + arena_waste;
}

}  // namespace logkv::engine
