// Where the older versions a shard keeps (versions_kept > 1) are: for each
// index entry, a chain of the locations of its older records, newest first.
//
// Layout, chosen for bytes per key: a node is a RecordLocation and the id of
// the next node (16 bytes), in a chunked slab with a free list; a chain is
// headed by a 4-byte slot per entry id. So an older version costs 16 bytes
// and a key without one its head slot alone; nothing is allocated per key.
// (Before, a hash map of per-key vectors of 40-byte items cost about 140
// bytes per key with history.)
//
// A node holds no version, timestamp or expiry: a key's kept versions count
// down by one from its current version (a put over a live key keeps the old
// one; anything else drops the history), so the k-th node (from 0) holds
// version `entry.version - 1 - k`, and the record itself has the rest.
//
// Thread-safety: none; the owning shard's mutex guards it.
#ifndef LOGKV_ENGINE_VERSION_CHAINS_H_
#define LOGKV_ENGINE_VERSION_CHAINS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/key_index.h"

namespace logkv::engine {

class VersionChains {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;

  VersionChains() = default;
  VersionChains(const VersionChains&) = delete;
  VersionChains& operator=(const VersionChains&) = delete;

  // The newest older version of entry_id, or kNone.
  uint32_t head(uint32_t entry_id) const {
    return entry_id < heads_.size() ? heads_[entry_id] : kNone;
  }
  uint32_t next(uint32_t node) const { return at(node).next; }
  const RecordLocation& location(uint32_t node) const { return at(node).location; }
  RecordLocation& location(uint32_t node) { return at(node).location; }

  // Makes location the newest older version of entry_id.
  void PushFront(uint32_t entry_id, const RecordLocation& location);
  // Makes location the oldest older version of entry_id; *tail is the
  // chain's last node (kNone for an empty chain) and becomes the new one.
  // Recovery builds chains newest first with it.
  void PushBack(uint32_t entry_id, const RecordLocation& location, uint32_t* tail);

  // Keeps the newest `keep` older versions of entry_id and frees the rest,
  // calling dropped(location) for each, oldest last. Returns how many went.
  template <typename F>
  size_t Truncate(uint32_t entry_id, size_t keep, F&& dropped) {
    if (entry_id >= heads_.size()) return 0;
    uint32_t* link = &heads_[entry_id];
    for (size_t i = 0; i < keep && *link != kNone; ++i) link = &at(*link).next;
    size_t freed = 0;
    uint32_t node = *link;
    *link = kNone;
    while (node != kNone) {
      Node& n = at(node);
      dropped(static_cast<const RecordLocation&>(n.location));
      const uint32_t following = n.next;
      n.next = free_;
      free_ = node;
      node = following;
      ++freed;
    }
    nodes_ -= freed;
    return freed;
  }

  // Calls f(node) for each older version of entry_id, newest first.
  template <typename F>
  void ForEach(uint32_t entry_id, F&& f) const {
    for (uint32_t node = head(entry_id); node != kNone; node = at(node).next) f(node);
  }
  size_t Count(uint32_t entry_id) const {
    size_t count = 0;
    ForEach(entry_id, [&](uint32_t) { ++count; });
    return count;
  }

  // Drops every chain and gives back the memory.
  void Clear() {
    std::vector<uint32_t>().swap(heads_);
    chunks_.clear();
    next_node_ = 0;
    free_ = kNone;
    nodes_ = 0;
  }
  // Makes room for a head slot per id below id_limit.
  void ReserveHeads(uint32_t id_limit);
  // Older versions kept in all.
  size_t nodes() const { return nodes_; }
  // Memory held: head slots and node chunks.
  size_t bytes() const {
    return heads_.capacity() * sizeof(uint32_t) + chunks_.capacity() * sizeof(void*) +
           chunks_.size() * kChunkNodes * sizeof(Node);
  }

 private:
  struct Node {
    RecordLocation location;
    uint32_t next;
  };
  static_assert(sizeof(Node) == 16, "bytes per older version are budgeted");
  static constexpr uint32_t kChunkShift = 12;
  static constexpr uint32_t kChunkNodes = 1u << kChunkShift;
  static constexpr uint32_t kChunkMask = kChunkNodes - 1;

  Node& at(uint32_t node) { return chunks_[node >> kChunkShift][node & kChunkMask]; }
  const Node& at(uint32_t node) const { return chunks_[node >> kChunkShift][node & kChunkMask]; }
  uint32_t& HeadSlot(uint32_t entry_id) {
    // resize grows the capacity geometrically; unused slots hold kNone.
    if (entry_id >= heads_.size()) heads_.resize(size_t{entry_id} + 1, kNone);
    return heads_[entry_id];
  }
  uint32_t Allocate(const RecordLocation& location, uint32_t next);

  std::vector<uint32_t> heads_;  // by entry id
  std::vector<std::unique_ptr<Node[]>> chunks_;
  uint32_t next_node_ = 0;  // nodes below it have been handed out
  uint32_t free_ = kNone;   // freed nodes, linked through next
  size_t nodes_ = 0;        // nodes in chains
};

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_VERSION_CHAINS_H_
