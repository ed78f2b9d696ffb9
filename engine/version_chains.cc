#include "engine/version_chains.h"

#include <cassert>

namespace logkv::engine {

uint32_t VersionChains::Allocate(const RecordLocation& location, uint32_t next) {
  uint32_t node = free_;
  if (node != kNone) {
    free_ = at(node).next;
  } else {
    assert(next_node_ != kNone);
    if ((next_node_ >> kChunkShift) == chunks_.size()) {
      chunks_.push_back(std::make_unique_for_overwrite<Node[]>(kChunkNodes));
    }
    node = next_node_++;
  }
  at(node) = Node{location, next};
  ++nodes_;
  return node;
}

void VersionChains::PushFront(uint32_t entry_id, const RecordLocation& location) {
  uint32_t& head = HeadSlot(entry_id);
  head = Allocate(location, head);
}

void VersionChains::PushBack(uint32_t entry_id, const RecordLocation& location,
                             uint32_t* tail) {
  const uint32_t node = Allocate(location, kNone);
  if (*tail == kNone) {
    uint32_t& head = HeadSlot(entry_id);
    assert(head == kNone);
    head = node;
  } else {
    at(*tail).next = node;
  }
  *tail = node;
}

void VersionChains::ReserveHeads(uint32_t id_limit) {
  if (heads_.size() < id_limit) {
    heads_.reserve(id_limit);
    heads_.resize(id_limit, kNone);
  }
}

}  // namespace logkv::engine
