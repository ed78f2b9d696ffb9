// The MANIFEST at the top of a data directory: format version and shard count,
// fixed when the directory is created. Written atomically (temporary file,
// sync, rename, directory sync).
#ifndef LOGKV_ENGINE_MANIFEST_H_
#define LOGKV_ENGINE_MANIFEST_H_

#include <cstdint>
#include "absl/strings/string_view.h"
#include <string>

#include "absl/status/statusor.h"
#include "engine/file_system.h"

namespace logkv::engine {

struct Manifest {
  uint32_t format_version = 0;
  uint32_t shard_count = 0;
};

std::string EncodeManifest(const Manifest& manifest);
absl::StatusOr<Manifest> DecodeManifest(absl::string_view text, const std::string& path);

absl::StatusOr<Manifest> ReadManifest(FileSystem* fs, const std::string& data_dir);
absl::Status WriteManifest(FileSystem* fs, const std::string& data_dir, const Manifest& manifest);

}  // namespace logkv::engine

#endif  // LOGKV_ENGINE_MANIFEST_H_
