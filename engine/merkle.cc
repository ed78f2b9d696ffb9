#include "engine/merkle.h"

#include <xxhash.h>

#include <bit>
#include <cassert>

namespace logkv::engine {

MerkleForest::MerkleForest(uint32_t partitions, uint32_t leaves)
    : partitions_(partitions),
      leaves_(leaves),
      partition_bits_(std::countr_zero(partitions)),
      leaf_bits_(std::countr_zero(leaves)),
      leaf_hashes_(new std::atomic<uint64_t>[size_t{partitions} * leaves]) {
  assert(std::has_single_bit(partitions));
  assert(std::has_single_bit(leaves));
  assert(partition_bits_ + leaf_bits_ <= 32);
  for (size_t i = 0; i < size_t{partitions_} * leaves_; ++i) {
    leaf_hashes_[i].store(0, std::memory_order_relaxed);
  }
}

uint64_t MerkleForest::LeafHash(absl::string_view key, uint64_t timestamp, bool tombstone) {
  // The seed folds in the timestamp and the tombstone bit, so one XXH3 pass
  // over the key covers all three.
  const uint64_t seed = timestamp * 2 + (tombstone ? 1 : 0);
  return XXH3_64bits_withSeed(key.data(), key.size(), seed);
}

uint32_t MerkleForest::LeafNodeOf(uint64_t key_hash) const {
  const uint64_t below_partition = key_hash << partition_bits_;
  const uint32_t leaf =
      leaf_bits_ == 0 ? 0 : static_cast<uint32_t>(below_partition >> (64 - leaf_bits_));
  return leaves_ + leaf;
}

void MerkleForest::Update(uint64_t key_hash, uint64_t leaf_hash) {
  const size_t leaf = size_t{PartitionOf(key_hash)} * leaves_ + (LeafNodeOf(key_hash) - leaves_);
  leaf_hashes_[leaf].fetch_xor(leaf_hash, std::memory_order_relaxed);
}

uint64_t MerkleForest::NodeHash(uint32_t partition, uint32_t node) const {
  assert(partition < partitions_);
  assert(node >= 1 && node < 2 * leaves_);
  // The leaves below node: shift node down to the leaf level on both ends.
  const int depth = std::bit_width(node) - 1;
  const int levels_below = leaf_bits_ - depth;
  const uint32_t first = (node << levels_below) - leaves_;
  const uint32_t last = ((node + 1) << levels_below) - leaves_;
  const std::atomic<uint64_t>* tree = &leaf_hashes_[size_t{partition} * leaves_];
  uint64_t hash = 0;
  for (uint32_t i = first; i < last; ++i) hash ^= tree[i].load(std::memory_order_relaxed);
  return hash;
}

}  // namespace logkv::engine
