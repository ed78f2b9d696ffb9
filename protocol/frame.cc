#include "protocol/frame.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace logkv::protocol {

char* FrameDecoder::WritableSpace(size_t min_bytes, size_t* available) {
  if (begin_ == end_) {
    begin_ = end_ = 0;
    if (storage_.size() * sizeof(uint64_t) > std::max(kRetainedBytes, min_bytes)) {
      storage_ = std::vector<uint64_t>();
    }
  }
  const size_t capacity = storage_.size() * sizeof(uint64_t);
  if (capacity - end_ < min_bytes) {
    // Move the unconsumed bytes to the front before growing.
    if (begin_ > 0) {
      std::memmove(data(), data() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
    if (capacity - end_ < min_bytes) {
      const size_t wanted = std::max(capacity * 2, end_ + min_bytes);
      storage_.resize((wanted + sizeof(uint64_t) - 1) / sizeof(uint64_t));
    }
  }
  *available = storage_.size() * sizeof(uint64_t) - end_;
  return data() + end_;
}

void FrameDecoder::Append(absl::string_view bytes) {
  if (bytes.empty()) return;
  size_t available;
  char* space = WritableSpace(bytes.size(), &available);
  std::memcpy(space, bytes.data(), bytes.size());
  Commit(bytes.size());
}

std::optional<uint32_t> FrameDecoder::NextFrameBytes() const {
  if (end_ - begin_ < kFrameLengthBytes) return std::nullopt;
  uint32_t length;
  std::memcpy(&length, reinterpret_cast<const char*>(storage_.data()) + begin_, sizeof(length));
  return length;
}

absl::StatusOr<std::optional<absl::string_view>> FrameDecoder::Next() {
  // The previous frame's copy is no longer valid: a large one is not kept.
  if (aligned_.size() * sizeof(uint64_t) > kRetainedBytes) aligned_ = std::vector<uint64_t>();
  const size_t buffered = end_ - begin_;
  if (buffered < kFrameLengthBytes) {
    if (buffered == 0) begin_ = end_ = 0;
    return std::nullopt;
  }
  uint32_t length;
  std::memcpy(&length, data() + begin_, sizeof(length));
  if (length == 0) return absl::InvalidArgumentError("frame of length 0");
  if (length > max_frame_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat("frame of ", length,
                                                     " bytes exceeds max_frame_bytes (",
                                                     max_frame_bytes_, ")"));
  }
  const size_t total = kFrameLengthBytes + size_t{length};
  if (buffered < total) return std::nullopt;
  const char* start = data() + begin_;
  begin_ += total;
  if (reinterpret_cast<uintptr_t>(start) % alignof(uint64_t) == 0) {
    return absl::string_view(start, total);
  }
  // FlatBuffers reads scalars in place: give it an aligned copy.
  aligned_.resize((total + sizeof(uint64_t) - 1) / sizeof(uint64_t));
  std::memcpy(aligned_.data(), start, total);
  return absl::string_view(reinterpret_cast<const char*>(aligned_.data()), total);
}

void FrameDecoder::ForEachBufferedFrame(
    absl::FunctionRef<bool(absl::string_view)> visit) const {
  const char* base = reinterpret_cast<const char*>(storage_.data());
  size_t at = begin_;
  while (end_ - at >= kFrameLengthBytes) {
    uint32_t length;
    std::memcpy(&length, base + at, sizeof(length));
    if (length == 0 || length > max_frame_bytes_) return;
    const size_t total = kFrameLengthBytes + size_t{length};
    const char* start = base + at;
    if (end_ - at < total || reinterpret_cast<uintptr_t>(start) % alignof(uint64_t) != 0) return;
    if (!visit(absl::string_view(start, total))) return;
    at += total;
  }
}

namespace {

flatbuffers::Verifier::Options VerifierOptions(size_t frame_bytes) {
  flatbuffers::Verifier::Options options;
  options.max_depth = 16;
  // Bounds the verifier's work: no frame can hold more tables than bytes / 4.
  options.max_tables = std::max<size_t>(16, frame_bytes / 4);
  options.check_alignment = true;
  return options;
}

absl::Status CheckFrameBounds(absl::string_view frame, uint32_t max_frame_bytes) {
  if (frame.size() < kFrameLengthBytes + 8) {
    return absl::InvalidArgumentError(absl::StrCat("frame of ", frame.size(),
                                                   " bytes is too short for a message"));
  }
  uint32_t length;
  std::memcpy(&length, frame.data(), sizeof(length));
  if (size_t{length} + kFrameLengthBytes != frame.size()) {
    return absl::InvalidArgumentError("frame length prefix does not match its size");
  }
  if (length > max_frame_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("frame of ", length,
                                                     " bytes exceeds max_frame_bytes (",
                                                     max_frame_bytes, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckKey(const flatbuffers::Vector<uint8_t>* key, const Limits& limits) {
  if (key == nullptr || key->size() == 0) return absl::InvalidArgumentError("key is empty");
  if (key->size() > limits.max_key_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("key of ", key->size(),
                                                   " bytes exceeds max_key_bytes (",
                                                   limits.max_key_bytes, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckValue(const flatbuffers::Vector<uint8_t>* value, const Limits& limits) {
  if (value != nullptr && value->size() > limits.max_value_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("value of ", value->size(),
                                                   " bytes exceeds max_value_bytes (",
                                                   limits.max_value_bytes, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckRequest(const Request& request, const Limits& limits) {
  if (static_cast<uint8_t>(request.operation_type()) > static_cast<uint8_t>(Operation::MAX)) {
    return absl::UnimplementedError(
        absl::StrCat("unknown operation ", static_cast<int>(request.operation_type())));
  }
  // The verifier accepts a union type whose value is absent; nothing below
  // may read the operation before this check (found by frame_fuzzer).
  if (request.operation_type() != Operation::NONE && request.operation() == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request names operation ", EnumNameOperation(request.operation_type()),
        " but carries none"));
  }
  switch (request.operation_type()) {
    case Operation::Get:
      return CheckKey(request.operation_as_Get()->key(), limits);
    case Operation::GetVersion:
      return CheckKey(request.operation_as_GetVersion()->key(), limits);
    case Operation::Delete:
      return CheckKey(request.operation_as_Delete()->key(), limits);
    case Operation::Put: {
      const Put* put = request.operation_as_Put();
      if (absl::Status s = CheckKey(put->key(), limits); !s.ok()) return s;
      if (put->ttl_ms() < 0 || put->ttl_ms() > kMaxTtlMs) {
        return absl::InvalidArgumentError(
            absl::StrCat("ttl_ms ", put->ttl_ms(), " outside [0, ", kMaxTtlMs, "]"));
      }
      return CheckValue(put->value(), limits);
    }
    case Operation::Batch: {
      const auto* items = request.operation_as_Batch()->items();
      const size_t count = items == nullptr ? 0 : items->size();
      if (count == 0) return absl::InvalidArgumentError("batch has no items");
      if (count > limits.max_batch_items) {
        return absl::ResourceExhaustedError(absl::StrCat("batch of ", count,
                                                         " items exceeds max_batch_items (",
                                                         limits.max_batch_items, ")"));
      }
      for (const BatchItem* item : *items) {
        if (absl::Status s = CheckKey(item->key(), limits); !s.ok()) return s;
        if (absl::Status s = CheckValue(item->value(), limits); !s.ok()) return s;
        if (item->ttl_ms() < 0 || item->ttl_ms() > kMaxTtlMs) {
          return absl::InvalidArgumentError(
              absl::StrCat("ttl_ms ", item->ttl_ms(), " outside [0, ", kMaxTtlMs, "]"));
        }
      }
      return absl::OkStatus();
    }
    case Operation::Scan:
      if (request.operation_as_Scan()->limit() > limits.max_scan_limit) {
        return absl::InvalidArgumentError(absl::StrCat("scan limit exceeds ",
                                                       limits.max_scan_limit));
      }
      return absl::OkStatus();
    case Operation::NONE:
      return absl::UnimplementedError("request has no operation");
    default:
      return absl::OkStatus();
  }
}

// Flattened: the verifier's small helpers are otherwise called out of line,
// and every request pays their calls.
[[gnu::flatten]] absl::StatusOr<const Request*> VerifyRequest(absl::string_view frame,
                                                              const Limits& limits) {
  if (absl::Status s = CheckFrameBounds(frame, limits.max_frame_bytes); !s.ok()) return s;
  const auto* bytes = reinterpret_cast<const uint8_t*>(frame.data());
  flatbuffers::Verifier verifier(bytes, frame.size(), VerifierOptions(frame.size()));
  if (!verifier.VerifySizePrefixedBuffer<Request>(nullptr)) {
    return absl::InvalidArgumentError("frame is not a valid Request (FlatBuffers verifier)");
  }
  return flatbuffers::GetSizePrefixedRoot<Request>(bytes);
}

absl::StatusOr<const Response*> VerifyResponse(absl::string_view frame, uint32_t max_frame_bytes) {
  if (absl::Status s = CheckFrameBounds(frame, max_frame_bytes); !s.ok()) return s;
  const auto* bytes = reinterpret_cast<const uint8_t*>(frame.data());
  flatbuffers::Verifier verifier(bytes, frame.size(), VerifierOptions(frame.size()));
  if (!verifier.VerifySizePrefixedBuffer<Response>(nullptr)) {
    return absl::DataLossError("frame is not a valid Response (FlatBuffers verifier)");
  }
  return flatbuffers::GetSizePrefixedRoot<Response>(bytes);
}

StatusCode ToWire(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return StatusCode::Ok;
    case absl::StatusCode::kNotFound:
      return StatusCode::NotFound;
    case absl::StatusCode::kInvalidArgument:
      return StatusCode::InvalidArgument;
    case absl::StatusCode::kFailedPrecondition:
      return StatusCode::FailedPrecondition;
    case absl::StatusCode::kResourceExhausted:
      return StatusCode::ResourceExhausted;
    case absl::StatusCode::kUnavailable:
      return StatusCode::Unavailable;
    case absl::StatusCode::kDataLoss:
      return StatusCode::DataLoss;
    case absl::StatusCode::kUnauthenticated:
      return StatusCode::Unauthenticated;
    case absl::StatusCode::kPermissionDenied:
      return StatusCode::PermissionDenied;
    case absl::StatusCode::kOutOfRange:
      return StatusCode::Compacted;
    case absl::StatusCode::kUnimplemented:
      return StatusCode::Unimplemented;
    case absl::StatusCode::kDeadlineExceeded:
      return StatusCode::DeadlineExceeded;
    case absl::StatusCode::kAborted:
      return StatusCode::Aborted;
    case absl::StatusCode::kAlreadyExists:
      return StatusCode::AlreadyExists;
    default:
      return StatusCode::Internal;
  }
}

namespace {
// Marks InsufficientStorageError. Never sent: the wire has its own code.
constexpr absl::string_view kInsufficientStoragePayloadUrl = "logkv.protocol/insufficient-storage";
}  // namespace

absl::Status InsufficientStorageError(absl::string_view message) {
  absl::Status status = absl::ResourceExhaustedError(message);
  status.SetPayload(kInsufficientStoragePayloadUrl, absl::Cord("insufficient storage"));
  return status;
}

bool IsInsufficientStorage(const absl::Status& status) {
  return absl::IsResourceExhausted(status) &&
         status.GetPayload(kInsufficientStoragePayloadUrl).has_value();
}

StatusCode ToWire(const absl::Status& status) {
  return IsInsufficientStorage(status) ? StatusCode::InsufficientStorage : ToWire(status.code());
}

absl::StatusCode FromWire(StatusCode code) {
  switch (code) {
    case StatusCode::Ok:
      return absl::StatusCode::kOk;
    case StatusCode::NotFound:
      return absl::StatusCode::kNotFound;
    case StatusCode::InvalidArgument:
      return absl::StatusCode::kInvalidArgument;
    case StatusCode::FailedPrecondition:
      return absl::StatusCode::kFailedPrecondition;
    case StatusCode::ResourceExhausted:
      return absl::StatusCode::kResourceExhausted;
    case StatusCode::Unavailable:
      return absl::StatusCode::kUnavailable;
    case StatusCode::DataLoss:
      return absl::StatusCode::kDataLoss;
    case StatusCode::Unauthenticated:
      return absl::StatusCode::kUnauthenticated;
    case StatusCode::PermissionDenied:
      return absl::StatusCode::kPermissionDenied;
    case StatusCode::Compacted:
      return absl::StatusCode::kOutOfRange;
    case StatusCode::Unimplemented:
      return absl::StatusCode::kUnimplemented;
    case StatusCode::DeadlineExceeded:
      return absl::StatusCode::kDeadlineExceeded;
    case StatusCode::Aborted:
      return absl::StatusCode::kAborted;
    case StatusCode::AlreadyExists:
      return absl::StatusCode::kAlreadyExists;
    case StatusCode::InsufficientStorage:
      return absl::StatusCode::kResourceExhausted;
    default:
      return absl::StatusCode::kInternal;
  }
}

namespace {
constexpr absl::string_view kRetryAfterPayload = "logkv.retry_after_ms";
}  // namespace

absl::Status WithRetryAfter(absl::Status status, int64_t retry_after_ms) {
  if (!status.ok() && retry_after_ms > 0) {
    status.SetPayload(kRetryAfterPayload, absl::Cord(absl::StrCat(retry_after_ms)));
  }
  return status;
}

int64_t RetryAfterMs(const absl::Status& status) {
  const auto payload = status.GetPayload(kRetryAfterPayload);
  int64_t retry_after_ms = 0;
  if (!payload.has_value() || !absl::SimpleAtoi(std::string(*payload), &retry_after_ms)) return 0;
  return retry_after_ms;
}

absl::Status StatusFromResponse(const Response& response) {
  if (response.status() == StatusCode::Ok) return absl::OkStatus();
  if (response.status() == StatusCode::InsufficientStorage) {
    return InsufficientStorageError(View(response.message()));
  }
  return WithRetryAfter(absl::Status(FromWire(response.status()), View(response.message())),
                        response.retry_after_ms());
}

// Flattened: every answer passes here, and FlatBuffers' builder steps are
// otherwise each a call.
[[gnu::flatten]] void FinishResponse(flatbuffers::FlatBufferBuilder* builder, uint64_t request_id,
                                     Result type, flatbuffers::Offset<void> result) {
  ResponseBuilder response(*builder);
  response.add_request_id(request_id);
  response.add_status(StatusCode::Ok);
  response.add_result_type(type);
  response.add_result(result);
  builder->FinishSizePrefixed(response.Finish());
}

void BuildStatusResponse(flatbuffers::FlatBufferBuilder* builder, uint64_t request_id,
                         const absl::Status& status) {
  builder->Clear();
  auto message = status.ok() ? 0 : builder->CreateString(status.message().data(),
                                                         status.message().size());
  ResponseBuilder response(*builder);
  response.add_request_id(request_id);
  response.add_status(ToWire(status));
  if (!status.ok()) response.add_message(message);
  if (const int64_t retry_after_ms = RetryAfterMs(status); retry_after_ms > 0) {
    response.add_retry_after_ms(retry_after_ms);
  }
  builder->FinishSizePrefixed(response.Finish());
}

}  // namespace logkv::protocol
