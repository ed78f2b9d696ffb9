#include "engine/arena.h"

#include <algorithm>
#include <cstring>

namespace logkv::engine {

const char* KeyArena::Store(absl::string_view bytes) {
  if (bytes.size() > remaining_) {
    // A key larger than a block gets a block of its own; the tail of the
    // previous block is abandoned (at most one key's worth).
    const size_t block_bytes = std::max(kBlockBytes, bytes.size());
    blocks_.push_back(std::make_unique_for_overwrite<char[]>(block_bytes));
    cursor_ = blocks_.back().get();
    remaining_ = block_bytes;
    allocated_bytes_ += block_bytes;
  }
  char* out = cursor_;
  std::memcpy(out, bytes.data(), bytes.size());
  cursor_ += bytes.size();
  remaining_ -= bytes.size();
  live_bytes_ += bytes.size();
  return out;
}

}  // namespace logkv::engine
