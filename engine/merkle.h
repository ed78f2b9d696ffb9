// Merkle summaries of the store for anti-entropy between replicas. The XXH3
// key-hash space is cut into partitions (the top bits of the hash); each
// partition is a fixed, complete binary tree whose leaves hold the XOR of
// LeafHash(key, timestamp, tombstone) over the keys that fall in them (the
// next bits of the hash), and whose inner nodes are the XOR of their
// children. XOR makes an update order-independent and reversible (remove =
// XOR again), so no exchange ever needs a rebuild scan.
//
// Only leaves are stored: a write is one atomic XOR (O(1)), and an inner
// node is computed when asked, by XORing the leaves below it (at most
// `leaves` words for a root), which anti-entropy does rarely compared with
// how often the store is written.
//
// Thread-safety: Update and NodeHash are lock-free and may run from any
// thread. A reader may see a tree mid-update; anti-entropy treats a
// difference as a hint to look closer, never as proof.
#ifndef LOGKV_ENGINE_MERKLE_H_
#define LOGKV_ENGINE_MERKLE_H_

#include <atomic>
#include <cstdint>
#include <memory>


#include "absl/strings/string_view.h"

namespace logkv::engine {

class MerkleForest {
 public:
  // REQUIRES: partitions and leaves are powers of two, partitions * leaves <= 2^32.
  MerkleForest(uint32_t partitions, uint32_t leaves);
  MerkleForest(const MerkleForest&) = delete;
  MerkleForest& operator=(const MerkleForest&) = delete;

  static uint64_t LeafHash(absl::string_view key, uint64_t timestamp, bool tombstone);

  // XORs leaf_hash into the key's leaf.
  void Update(uint64_t key_hash, uint64_t leaf_hash);

  uint32_t PartitionOf(uint64_t key_hash) const {
    return partition_bits_ == 0 ? 0 : static_cast<uint32_t>(key_hash >> (64 - partition_bits_));
  }
  // The leaf's node index, in [leaves, 2 * leaves).
  uint32_t LeafNodeOf(uint64_t key_hash) const;

  // REQUIRES: partition < partitions(), 1 <= node < 2 * leaves().
  uint64_t NodeHash(uint32_t partition, uint32_t node) const;

  uint32_t partitions() const { return partitions_; }
  uint32_t leaves() const { return leaves_; }
  size_t memory_bytes() const { return size_t{partitions_} * leaves_ * sizeof(uint64_t); }

 private:
  const uint32_t partitions_;
  const uint32_t leaves_;
  const int partition_bits_;
  const int leaf_bits_;
  // Per partition leaves_ words, leaf node n at index n - leaves_.
  std::unique_ptr<std::atomic<uint64_t>[]> leaf_hashes_;
};

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_MERKLE_H_
