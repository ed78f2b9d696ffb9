#include "engine/manifest.h"

#include <xxhash.h>

#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/log_format.h"

namespace logkv::engine {

namespace {

std::string Body(const Manifest& manifest) {
  return absl::StrCat("logkv-manifest ", manifest.format_version, "\nshards ",
                      manifest.shard_count, "\n");
}

}  // namespace

std::string EncodeManifest(const Manifest& manifest) {
  const std::string body = Body(manifest);
  return absl::StrCat(body, "checksum ",
                      absl::Hex(XXH3_64bits(body.data(), body.size()), absl::kZeroPad16), "\n");
}

absl::StatusOr<Manifest> DecodeManifest(absl::string_view text, const std::string& path) {
  auto bad = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat(path, ": ", why));
  };
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  if (lines.size() != 3) return bad("expected 3 lines");
  std::vector<absl::string_view> version = absl::StrSplit(lines[0], ' ');
  std::vector<absl::string_view> shards = absl::StrSplit(lines[1], ' ');
  std::vector<absl::string_view> checksum = absl::StrSplit(lines[2], ' ');
  Manifest manifest;
  uint64_t stored_checksum;
  if (version.size() != 2 || version[0] != "logkv-manifest" ||
      !absl::SimpleAtoi(version[1], &manifest.format_version)) {
    return bad("first line is not 'logkv-manifest <version>'");
  }
  if (shards.size() != 2 || shards[0] != "shards" ||
      !absl::SimpleAtoi(shards[1], &manifest.shard_count) || manifest.shard_count == 0) {
    return bad("second line is not 'shards <count>'");
  }
  if (checksum.size() != 2 || checksum[0] != "checksum" ||
      !absl::SimpleHexAtoi(checksum[1], &stored_checksum)) {
    return bad("third line is not 'checksum <hex>'");
  }
  const std::string body = Body(manifest);
  if (XXH3_64bits(body.data(), body.size()) != stored_checksum) return bad("checksum mismatch");
  if (manifest.format_version != format::kFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": format version ",
                                                      manifest.format_version,
                                                      ", this build reads ",
                                                      format::kFormatVersion));
  }
  return manifest;
}

absl::StatusOr<Manifest> ReadManifest(FileSystem* fs, const std::string& data_dir) {
  const std::string path = absl::StrCat(data_dir, "/", format::kManifestName);
  auto text = fs->ReadFile(path);
  if (!text.ok()) return text.status();
  return DecodeManifest(*text, path);
}

absl::Status WriteManifest(FileSystem* fs, const std::string& data_dir, const Manifest& manifest) {
  const std::string path = absl::StrCat(data_dir, "/", format::kManifestName);
  const std::string temporary = path + ".tmp";
  if (absl::Status status = fs->WriteFile(temporary, EncodeManifest(manifest), /*sync=*/true);
      !status.ok()) {
    return status;
  }
  if (absl::Status status = fs->RenameFile(temporary, path); !status.ok()) return status;
  return fs->SyncDir(data_dir);
}

}  // namespace logkv::engine
