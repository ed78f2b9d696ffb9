// Framing of the binary protocol (docs/protocol.md): a frame is a 4-byte
// little-endian length N followed by N bytes of FlatBuffer; together they are
// one size-prefixed FlatBuffer. Every incoming frame is checked against the
// limits first, then by the FlatBuffers Verifier on its exact bounds, before
// any field is read. The protocol library knows nothing of the engine.
#ifndef LOGKV_PROTOCOL_FRAME_H_
#define LOGKV_PROTOCOL_FRAME_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "protocol/logkv_generated.h"

namespace logkv::protocol {

inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr size_t kFrameLengthBytes = 4;
// Longest TTL accepted: 100 years, far from overflowing now + ttl in ms.
inline constexpr int64_t kMaxTtlMs = int64_t{100} * 365 * 24 * 3600 * 1000;

struct Limits {
  uint32_t max_frame_bytes = 64u << 20;
  uint32_t max_key_bytes = 4096;
  uint32_t max_value_bytes = 16u << 20;
  uint32_t max_batch_items = 10'000;
  uint32_t max_scan_limit = 10'000;
};

// Turns a byte stream into frames. Buffers only what has arrived: a length
// announcing more than max_frame_bytes is refused at once, and the announced
// size is never allocated up front. Storage grown for a large frame is given
// back once the decoder is empty again, so a connection that sent one large
// frame does not keep its memory.
//
// Thread-safety: none; one decoder per connection.
class FrameDecoder {
 public:
  explicit FrameDecoder(uint32_t max_frame_bytes) : max_frame_bytes_(max_frame_bytes) {}
  FrameDecoder(const FrameDecoder&) = delete;
  FrameDecoder& operator=(const FrameDecoder&) = delete;

  // Space to receive into (at least min_bytes), to be committed with Commit.
  char* WritableSpace(size_t min_bytes, size_t* available);
  void Commit(size_t bytes) { end_ += bytes; }
  void Append(absl::string_view bytes);

  // The next complete frame, length prefix included, 8-byte aligned; valid
  // until the next call to any method. nullopt: more bytes are needed.
  // ResourceExhausted: the announced length exceeds the limit (the stream
  // cannot be resynchronised; close it). InvalidArgument: length zero.
  absl::StatusOr<std::optional<absl::string_view>> Next();

  size_t buffered_bytes() const { return end_ - begin_; }
  // The bytes received and not yet taken as frames (for messages: what a
  // peer that does not speak the protocol sent). Valid until the next call.
  absl::string_view buffered() const {
    return absl::string_view(reinterpret_cast<const char*>(storage_.data()) + begin_,
                             end_ - begin_);
  }
  // Calls visit with each complete frame buffered (length prefix included)
  // that Next would return in place (8-byte aligned), in order, until visit
  // returns false or a frame is incomplete, misaligned or of a length Next
  // refuses. Consumes nothing; the views are valid until the next call to
  // any method.
  void ForEachBufferedFrame(absl::FunctionRef<bool(absl::string_view)> visit) const;
  // The length announced by the next frame's prefix (not counting the
  // prefix), once its 4 bytes have arrived; nullopt before. Lets the caller
  // apply its own limits (before authentication, on memory) before the
  // frame's bytes are buffered.
  std::optional<uint32_t> NextFrameBytes() const;

  // Storage above this is freed when the decoder runs empty.
  static constexpr size_t kRetainedBytes = 256u << 10;

 private:
  const uint32_t max_frame_bytes_;
  // Storage of uint64_t so frames copied to the front are 8-byte aligned.
  std::vector<uint64_t> storage_;
  size_t begin_ = 0;  // first unconsumed byte
  size_t end_ = 0;    // one past the last received byte
  std::vector<uint64_t> aligned_;  // a misaligned frame is copied here
  char* data() { return reinterpret_cast<char*>(storage_.data()); }
};

// Verifies a frame (length prefix included) as a Request: exact bounds and
// the FlatBuffers Verifier. A failure means the peer does not speak the
// protocol: answer and close the connection.
absl::StatusOr<const Request*> VerifyRequest(absl::string_view frame, const Limits& limits);
// Checks a verified request against the limits on keys, values, batches and
// scans, and that its operation is one this build knows. A failure is the
// request's answer; the connection goes on.
absl::Status CheckRequest(const Request& request, const Limits& limits);
// Verifies a frame as a Response.
absl::StatusOr<const Response*> VerifyResponse(absl::string_view frame, uint32_t max_frame_bytes);

// Bytes of a FlatBuffers vector as a string_view (empty for a missing vector).
inline absl::string_view View(const flatbuffers::Vector<uint8_t>* bytes) {
  if (bytes == nullptr) return {};
  return absl::string_view(reinterpret_cast<const char*>(bytes->data()), bytes->size());
}
inline absl::string_view View(const flatbuffers::String* text) {
  if (text == nullptr) return {};
  return absl::string_view(text->data(), text->size());
}

// A write refused because the server's disk is full. On the wire it is
// StatusCode::InsufficientStorage; in absl terms ResourceExhausted with a
// payload that tells it from a limit (IsInsufficientStorage).
[[nodiscard]] absl::Status InsufficientStorageError(absl::string_view message);
bool IsInsufficientStorage(const absl::Status& status);

// Mapping between absl status codes and the wire's StatusCode. The form
// taking a Status also maps InsufficientStorageError; StatusFromResponse
// gives that back as such.
StatusCode ToWire(absl::StatusCode code);
StatusCode ToWire(const absl::Status& status);
absl::StatusCode FromWire(StatusCode code);
// With Response.retry_after_ms as RetryAfterMs.
absl::Status StatusFromResponse(const Response& response);

// How long a refused request should wait before it is retried (a rate
// limit): a payload of the status, which BuildStatusResponse sends as
// Response.retry_after_ms.
absl::Status WithRetryAfter(absl::Status status, int64_t retry_after_ms);
// 0 when status carries none.
int64_t RetryAfterMs(const absl::Status& status);

// The frame bytes of a finished size-prefixed builder.
inline absl::string_view FrameOf(const flatbuffers::FlatBufferBuilder& builder) {
  return absl::string_view(reinterpret_cast<const char*>(builder.GetBufferPointer()),
                           builder.GetSize());
}

// Finishes a size-prefixed Response with status Ok carrying result.
void FinishResponse(flatbuffers::FlatBufferBuilder* builder, uint64_t request_id, Result type,
                    flatbuffers::Offset<void> result);

// Builds a Response with only a status (errors, and results-less answers).
void BuildStatusResponse(flatbuffers::FlatBufferBuilder* builder, uint64_t request_id,
                         const absl::Status& status);

}  // namespace logkv::protocol

#endif  // LOGKV_PROTOCOL_FRAME_H_
