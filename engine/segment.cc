#include "engine/segment.h"

#include <xxhash.h>

#include <algorithm>
#include <cassert>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace logkv::engine {

std::string SegmentFileName(uint32_t segment_id) {
  return absl::StrFormat("%012u.log", segment_id);
}
std::string HintFileName(uint32_t segment_id) { return absl::StrFormat("%012u.hint", segment_id); }

bool ParseSegmentFileName(absl::string_view name, absl::string_view suffix, uint32_t* segment_id) {
  constexpr size_t kDigits = 12;
  if (name.size() != kDigits + suffix.size() || name.substr(kDigits) != suffix) return false;
  for (char c : name.substr(0, kDigits)) {
    if (c < '0' || c > '9') return false;
  }
  uint64_t id;
  if (!absl::SimpleAtoi(name.substr(0, kDigits), &id) || id == 0 || id > UINT32_MAX) return false;
  *segment_id = static_cast<uint32_t>(id);
  return true;
}

namespace {

uint64_t HeaderChecksum(const format::SegmentHeader& header) {
  return XXH3_64bits(&header, offsetof(format::SegmentHeader, checksum));
}

}  // namespace

format::SegmentHeader MakeSegmentHeader(uint32_t shard_id, uint32_t segment_id, uint32_t flags,
                                        uint64_t base_sequence, int64_t now_unix_ms) {
  format::SegmentHeader header;
  std::memset(&header, 0, sizeof(header));
  std::memcpy(header.magic, format::kSegmentMagic, sizeof(header.magic));
  header.format_version = format::kFormatVersion;
  header.flags = flags;
  header.shard_id = shard_id;
  header.segment_id = segment_id;
  header.base_sequence = base_sequence;
  header.created_unix_ms = now_unix_ms;
  header.checksum = HeaderChecksum(header);
  return header;
}

Segment::Segment(std::string path, const format::SegmentHeader& header)
    : path_(std::move(path)), header_(header) {}

absl::StatusOr<std::unique_ptr<Segment>> Segment::Create(FileSystem* fs, const std::string& path,
                                                         const format::SegmentHeader& header,
                                                         uint64_t capacity_bytes) {
  assert(capacity_bytes > format::kSegmentHeaderBytes);
  auto file = fs->NewWritableFile(path, capacity_bytes);
  if (!file.ok()) return file.status();
  std::unique_ptr<Segment> segment(new Segment(path, header));
  absl::Status status = (*file)->Append(
      absl::string_view(reinterpret_cast<const char*>(&header), sizeof(header)));
  if (!status.ok()) {
    // Without its header the file is no segment: leave nothing behind. Should
    // the removal fail as well, start-up removes a header-less newest segment.
    file->reset();
    (void)fs->RemoveFile(path);
    return status;
  }
  segment->writable_ = std::move(*file);
  segment->size_.store(format::kSegmentHeaderBytes, std::memory_order_release);
  return segment;
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::Open(FileSystem* fs, const std::string& path,
                                                       uint32_t expected_shard_id,
                                                       uint32_t expected_segment_id) {
  auto file = fs->NewReadableFile(path);
  if (!file.ok()) return file.status();
  if ((*file)->Size() < format::kSegmentHeaderBytes) {
    return absl::DataLossError(absl::StrCat(path, ": ", (*file)->Size(),
                                            " bytes, too short for a segment header"));
  }
  auto bytes = (*file)->Read(0, format::kSegmentHeaderBytes, nullptr);
  if (!bytes.ok()) return bytes.status();
  format::SegmentHeader header;
  std::memcpy(&header, bytes->data(), sizeof(header));
  if (std::memcmp(header.magic, format::kSegmentMagic, sizeof(header.magic)) != 0) {
    return absl::DataLossError(absl::StrCat(path, " at offset 0: not a logkv segment (bad magic)"));
  }
  if (header.checksum != HeaderChecksum(header)) {
    return absl::DataLossError(absl::StrCat(path, " at offset 0: segment header checksum mismatch"));
  }
  if (header.format_version != format::kFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": segment format version ",
                                                      header.format_version, ", this build reads ",
                                                      format::kFormatVersion));
  }
  if (header.shard_id != expected_shard_id || header.segment_id != expected_segment_id) {
    return absl::DataLossError(absl::StrCat(path, ": header says shard ", header.shard_id,
                                            " segment ", header.segment_id, ", expected shard ",
                                            expected_shard_id, " segment ", expected_segment_id));
  }
  std::unique_ptr<Segment> segment(new Segment(path, header));
  segment->size_.store((*file)->Size(), std::memory_order_release);
  segment->readable_ = std::move(*file);
  return segment;
}

uint64_t Segment::reserved_ahead() const {
  return writable_ == nullptr ? 0 : writable_->Reserved() - std::min(writable_->Reserved(), size());
}

uint64_t Segment::remaining() const {
  return writable_ == nullptr ? 0 : writable_->Capacity() - size();
}

absl::StatusOr<uint32_t> Segment::Append(absl::string_view data) {
  assert(writable_ != nullptr);
  const uint64_t offset = size();
  assert(offset <= UINT32_MAX);
  if (absl::Status status = writable_->Append(data); !status.ok()) return status;
  size_.store(offset + data.size(), std::memory_order_release);
  return static_cast<uint32_t>(offset);
}

absl::StatusOr<absl::string_view> Segment::Read(uint64_t offset, size_t n) const {
  if (offset > size() || n > size() - offset) {
    return absl::DataLossError(absl::StrCat(path_, ": read of ", n, " bytes at offset ", offset,
                                            " past the end of the data (", size(), " bytes)"));
  }
  return writable_ != nullptr ? writable_->Read(offset, n, nullptr)
                              : readable_->Read(offset, n, nullptr);
}

absl::StatusOr<absl::string_view> Segment::ReadToEnd(uint64_t offset) const {
  const uint64_t end = size();
  return Read(offset, offset <= end ? end - offset : 0);
}

void Segment::NextData(uint64_t offset, uint64_t* begin, uint64_t* end) const {
  if (readable_ != nullptr && writable_ == nullptr) {
    readable_->NextData(offset, begin, end);
    *end = std::min(*end, size());
    *begin = std::min(*begin, *end);
    return;
  }
  *begin = std::min(offset, size());
  *end = size();
}

absl::Status Segment::CopyOut(uint64_t offset, size_t n, std::string* out) {
  absl::MutexLock lock(&file_mu_);
  auto bytes = Read(offset, n);
  if (!bytes.ok()) return bytes.status();
  out->assign(bytes->data(), bytes->size());
  return absl::OkStatus();
}

absl::Status Segment::Sync() {
  absl::MutexLock lock(&file_mu_);
  if (writable_ == nullptr) return absl::OkStatus();
  return writable_->Sync();
}

void Segment::StartWriteback() {
  absl::MutexLock lock(&file_mu_);
  if (writable_ != nullptr) writable_->StartWriteback();
}

void Segment::Prepare(uint64_t bytes) {
  absl::MutexLock lock(&file_mu_);
  if (writable_ != nullptr) writable_->Prepare(bytes);
}

absl::Status Segment::Seal(FileSystem* fs) {
  absl::MutexLock lock(&file_mu_);
  if (writable_ == nullptr) return absl::OkStatus();
  if (absl::Status status = writable_->Sync(); !status.ok()) return status;
  if (absl::Status status = writable_->Close(); !status.ok()) return status;
  auto readable = fs->NewReadableFile(path_);
  if (!readable.ok()) return readable.status();
  readable_ = std::move(*readable);
  writable_.reset();
  return absl::OkStatus();
}

absl::Status Segment::Reopen(FileSystem* fs, uint64_t capacity_bytes) {
  absl::MutexLock lock(&file_mu_);
  assert(writable_ == nullptr);
  assert(capacity_bytes > size());
  auto file = fs->ReopenWritableFile(path_, capacity_bytes);
  if (!file.ok()) return file.status();
  if ((*file)->Size() != size()) {
    const uint64_t found = (*file)->Size();
    (void)(*file)->Close();  // trims it back to what it holds
    return absl::DataLossError(absl::StrCat(path_, " holds ", found, " bytes, ", size(),
                                            " were recovered: not reopened for appends"));
  }
  // The writable mapping covers the data too: the read-only one can go.
  writable_ = std::move(*file);
  readable_.reset();
  return absl::OkStatus();
}

absl::Status Segment::Rename(FileSystem* fs, const std::string& new_path) {
  absl::MutexLock lock(&file_mu_);
  if (absl::Status status = fs->RenameFile(path_, new_path); !status.ok()) return status;
  path_ = new_path;
  return absl::OkStatus();
}

absl::Status Segment::TruncateTo(FileSystem* fs, uint64_t size) {
  absl::MutexLock lock(&file_mu_);
  assert(writable_ == nullptr);
  readable_.reset();  // unmap before shrinking the file under the mapping
  if (absl::Status status = fs->TruncateFile(path_, size); !status.ok()) return status;
  auto readable = fs->NewReadableFile(path_);
  if (!readable.ok()) return readable.status();
  readable_ = std::move(*readable);
  size_.store(readable_->Size(), std::memory_order_release);
  return absl::OkStatus();
}

}  // namespace logkv::engine
