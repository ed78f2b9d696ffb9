// Storage for index keys: bytes are bump-allocated from large blocks, so a key
// costs its own length and nothing else. Freed bytes are only counted; the
// owner (KeyIndex) rebuilds the arena when too much of it is garbage.
//
// Thread-safety: none; the owning shard's mutex guards it.
#ifndef LOGKV_ENGINE_ARENA_H_
#define LOGKV_ENGINE_ARENA_H_

#include <cstddef>
#include <cstdint>
#include <memory>


#include "absl/strings/string_view.h"
#include <vector>

namespace logkv::engine {

class KeyArena {
 public:
  static constexpr size_t kBlockBytes = 64 << 10;

  KeyArena() = default;
  KeyArena(const KeyArena&) = delete;
  KeyArena& operator=(const KeyArena&) = delete;
  KeyArena(KeyArena&&) = default;
  KeyArena& operator=(KeyArena&&) = default;

  // Copies bytes into the arena; the pointer stays valid until the arena is
  // destroyed or replaced.
  const char* Store(absl::string_view bytes);
  // Marks size bytes as garbage.
  void Release(size_t size) { live_bytes_ -= size; }

  size_t live_bytes() const { return live_bytes_; }
  size_t allocated_bytes() const { return allocated_bytes_; }

 private:
  std::vector<std::unique_ptr<char[]>> blocks_;
  char* cursor_ = nullptr;
  size_t remaining_ = 0;
  size_t live_bytes_ = 0;
  size_t allocated_bytes_ = 0;  // block bytes obtained from the allocator
};

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_ARENA_H_
