#include "engine/value_codec.h"

#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <ctime>

#include "absl/strings/str_cat.h"

namespace logkv::engine {

namespace {

// One pair per thread, made on first use and freed when the thread ends.
// Larger compression buffers are freed after use rather than kept.
constexpr size_t kMaxKeptOutputBytes = 1 << 20;

struct ZstdContexts {
  ZSTD_CCtx* compress = nullptr;
  ZSTD_DCtx* decompress = nullptr;
  std::string output;  // CompressValue's result
  ZstdContexts() = default;
  ZstdContexts(const ZstdContexts&) = delete;
  ZstdContexts& operator=(const ZstdContexts&) = delete;
  ~ZstdContexts() {
    ZSTD_freeCCtx(compress);
    ZSTD_freeDCtx(decompress);
  }
};

ZstdContexts& ThreadContexts() {
  thread_local ZstdContexts contexts;
  return contexts;
}

}  // namespace

absl::string_view CompressValue(absl::string_view value, int level) {
  // Records are padded to 8 bytes, so a smaller saving may be no saving; and
  // a small one is not worth a decompression on every read.
  const size_t saving = std::max<size_t>(value.size() / 8, format::kRecordAlignment);
  if (value.size() <= saving + format::kCompressedSizeBytes) return {};
  const size_t capacity = value.size() - saving - format::kCompressedSizeBytes;
  ZstdContexts& contexts = ThreadContexts();
  if (contexts.compress == nullptr) {
    contexts.compress = ZSTD_createCCtx();
    if (contexts.compress == nullptr) return {};
  }
  if (ZSTD_isError(ZSTD_CCtx_setParameter(contexts.compress, ZSTD_c_compressionLevel, level))) {
    return {};
  }
  // The buffer only grows (a string zero-fills what it grows by, which would
  // cost as much as compressing a large value), up to a bound past which a
  // large value's buffer is not kept for the thread's life.
  std::string& buffer = contexts.output;
  const size_t needed = format::kCompressedSizeBytes + capacity;
  if (buffer.size() < needed) buffer.resize(needed);
  const uint32_t plain_size = static_cast<uint32_t>(value.size());
  std::memcpy(buffer.data(), &plain_size, sizeof(plain_size));
  // The output is capped at what would pay: zstd fails with dstSize_tooSmall
  // when it does not fit, and the value is stored plain.
  const size_t written =
      ZSTD_compress2(contexts.compress, buffer.data() + format::kCompressedSizeBytes, capacity,
                     value.data(), value.size());
  if (ZSTD_isError(written)) {
    // A failed call can leave the context mid-frame; the next one starts anew.
    ZSTD_CCtx_reset(contexts.compress, ZSTD_reset_session_only);
    if (buffer.size() > kMaxKeptOutputBytes) std::string().swap(buffer);
    return {};
  }
  return absl::string_view(buffer.data(), format::kCompressedSizeBytes + written);
}

void ReleaseCompressionBuffer() {
  std::string& buffer = ThreadContexts().output;
  if (buffer.size() > kMaxKeptOutputBytes) std::string().swap(buffer);
}

uint32_t PlainValueSize(const LogRecord& record) {
  if (!record.compressed() || record.value.size() < format::kCompressedSizeBytes) {
    return static_cast<uint32_t>(record.value.size());
  }
  uint32_t plain_size;
  std::memcpy(&plain_size, record.value.data(), sizeof(plain_size));
  return plain_size;
}

absl::Status DecodeValue(const LogRecord& record, uint32_t max_value_bytes, std::string* out) {
  if (!record.compressed()) {
    out->assign(record.value.data(), record.value.size());
    return absl::OkStatus();
  }
  if (record.value.size() <= format::kCompressedSizeBytes) {
    return absl::DataLossError(
        absl::StrCat("compressed value of only ", record.value.size(), " bytes"));
  }
  const uint32_t plain_size = PlainValueSize(record);
  if (plain_size > max_value_bytes) {
    return absl::DataLossError(absl::StrCat("compressed value of ", plain_size,
                                            " plain bytes exceeds the limit ", max_value_bytes));
  }
  const absl::string_view frame = record.value.substr(format::kCompressedSizeBytes);
  // The frame states its size too: both must agree before anything is
  // allocated, and the output buffer bounds what is written anyway.
  const unsigned long long frame_size = ZSTD_getFrameContentSize(frame.data(), frame.size());
  if (frame_size != plain_size) {
    return absl::DataLossError(
        frame_size == ZSTD_CONTENTSIZE_ERROR || frame_size == ZSTD_CONTENTSIZE_UNKNOWN
            ? std::string("compressed value: not a zstd frame with its size")
            : absl::StrCat("compressed value: the frame holds ", frame_size,
                           " bytes, the record says ", plain_size));
  }
  ZstdContexts& contexts = ThreadContexts();
  if (contexts.decompress == nullptr) {
    contexts.decompress = ZSTD_createDCtx();
    if (contexts.decompress == nullptr) {
      return absl::ResourceExhaustedError("cannot create a zstd decompression context");
    }
  }
  out->resize(plain_size);
  const size_t written = ZSTD_decompressDCtx(contexts.decompress, out->data(), plain_size,
                                             frame.data(), frame.size());
  if (ZSTD_isError(written)) {
    out->clear();
    return absl::DataLossError(
        absl::StrCat("compressed value does not decompress: ", ZSTD_getErrorName(written)));
  }
  if (written != plain_size) {
    out->clear();
    return absl::DataLossError(absl::StrCat("compressed value decompressed to ", written,
                                            " bytes, the record says ", plain_size));
  }
  return absl::OkStatus();
}

int64_t ThreadCpuNanos() {
  timespec now;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now) != 0) return 0;
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

}  // namespace logkv::engine
