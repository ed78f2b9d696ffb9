// Frame codec: partial frames, limits, garbage, verification, status mapping.
#include "protocol/frame.h"

#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/server/logkvd_process.h"

namespace logkv::protocol {
namespace {

std::string FrameBytes(uint32_t length, absl::string_view body) {
  return std::string(reinterpret_cast<const char*>(&length), 4) + std::string(body);
}

TEST(FrameDecoderTest, YieldsWholeFramesFromPartialReads) {
  const std::string a = test::PutFrame(1, "key", std::string(300, 'a'));
  const std::string b = test::GetFrame(2, "key");
  const std::string stream = a + b;
  // Every split point of the stream into two reads gives the same two frames.
  for (size_t split = 0; split <= stream.size(); ++split) {
    FrameDecoder decoder(1 << 20);
    std::vector<std::string> frames;
    for (absl::string_view part : {absl::string_view(stream).substr(0, split),
                                   absl::string_view(stream).substr(split)}) {
      decoder.Append(part);
      while (true) {
        auto frame = decoder.Next();
        ASSERT_TRUE(frame.ok()) << frame.status();
        if (!frame->has_value()) break;
        EXPECT_EQ(reinterpret_cast<uintptr_t>((*frame)->data()) % 8, 0u) << "frames are aligned";
        frames.emplace_back(**frame);
      }
    }
    ASSERT_EQ(frames.size(), 2u) << "split at " << split;
    EXPECT_EQ(frames[0], a);
    EXPECT_EQ(frames[1], b);
    EXPECT_EQ(decoder.buffered_bytes(), 0u);
  }
}

TEST(FrameDecoderTest, ByteByByte) {
  const std::string a = test::PutFrame(7, "k", "v");
  FrameDecoder decoder(1 << 20);
  for (size_t i = 0; i + 1 < a.size(); ++i) {
    decoder.Append(a.substr(i, 1));
    auto frame = decoder.Next();
    ASSERT_TRUE(frame.ok());
    EXPECT_FALSE(frame->has_value()) << "no frame before its last byte (" << i << ")";
  }
  decoder.Append(a.substr(a.size() - 1));
  auto frame = decoder.Next();
  ASSERT_TRUE(frame.ok());
  ASSERT_TRUE(frame->has_value());
  EXPECT_EQ(**frame, a);
}

// ForEachBufferedFrame shows the whole frames buffered that Next would give
// in place, in order, and consumes nothing.
TEST(FrameDecoderTest, ForEachBufferedFrameShowsWholeAlignedFramesAndConsumesNothing) {
  const std::string a = test::PutFrame(1, "key", std::string(300, 'a'));
  const std::string b = test::GetFrame(2, "key");
  const std::string c = test::GetFrame(3, "other");
  ASSERT_EQ(a.size() % 8, 0u);
  ASSERT_EQ(b.size() % 8, 0u);
  FrameDecoder decoder(1 << 20);
  decoder.Append(a + b + c.substr(0, c.size() - 1));  // c is not whole
  std::vector<std::string> seen;
  decoder.ForEachBufferedFrame([&](absl::string_view frame) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(frame.data()) % 8, 0u);
    seen.emplace_back(frame);
    return true;
  });
  EXPECT_EQ(seen, (std::vector<std::string>{a, b}));
  // Stopped by the visitor after the first.
  seen.clear();
  decoder.ForEachBufferedFrame([&](absl::string_view frame) {
    seen.emplace_back(frame);
    return false;
  });
  EXPECT_EQ(seen, (std::vector<std::string>{a}));
  // Nothing was consumed: Next gives the same frames, then c once whole.
  decoder.Append(c.substr(c.size() - 1));
  for (const std::string& expected : {a, b, c}) {
    auto frame = decoder.Next();
    ASSERT_TRUE(frame.ok() && frame->has_value());
    EXPECT_EQ(**frame, expected);
  }
  // A frame that would be misaligned, one of length 0 and one over the
  // limit end the walk (Next copies the first, refuses the others).
  FrameDecoder odd(1024);
  odd.Append(FrameBytes(3, "abc") + b);
  seen.clear();
  odd.ForEachBufferedFrame([&](absl::string_view frame) {
    seen.emplace_back(frame);
    return true;
  });
  EXPECT_EQ(seen, (std::vector<std::string>{FrameBytes(3, "abc")}));
  for (uint32_t length : {0u, 1025u}) {
    FrameDecoder refused(1024);
    refused.Append(FrameBytes(length, std::string(length == 0 ? 0 : 1025, 'x')));
    bool visited = false;
    refused.ForEachBufferedFrame([&](absl::string_view) { return visited = true; });
    EXPECT_FALSE(visited) << length;
  }
}

TEST(FrameDecoderTest, RefusesOversizedLengthWithoutAllocatingIt) {
  FrameDecoder decoder(1024);
  decoder.Append(FrameBytes(1025, ""));
  auto frame = decoder.Next();
  EXPECT_EQ(frame.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(frame.status().message().find("max_frame_bytes"), absl::string_view::npos);
  EXPECT_LT(decoder.buffered_bytes(), 64u);
}

TEST(FrameDecoderTest, PeeksTheLengthAndGivesLargeStorageBack) {
  FrameDecoder decoder(4u << 20);
  const std::string big = test::PutFrame(1, "k", std::string(2u << 20, 'b'));
  EXPECT_FALSE(decoder.NextFrameBytes().has_value());
  decoder.Append(big.substr(0, 3));
  EXPECT_FALSE(decoder.NextFrameBytes().has_value());
  decoder.Append(big.substr(3, 1));
  ASSERT_TRUE(decoder.NextFrameBytes().has_value());
  EXPECT_EQ(*decoder.NextFrameBytes(), big.size() - kFrameLengthBytes);
  decoder.Append(big.substr(4));
  auto frame = decoder.Next();
  ASSERT_TRUE(frame.ok());
  ASSERT_TRUE(frame->has_value());
  EXPECT_EQ(**frame, big);
  // Empty again: the next read does not land in the 2 MiB grown for that frame.
  size_t available = 0;
  decoder.WritableSpace(64u << 10, &available);
  EXPECT_GE(available, 64u << 10);
  EXPECT_LE(available, FrameDecoder::kRetainedBytes);
}

TEST(FrameDecoderTest, RefusesZeroLength) {
  FrameDecoder decoder(1024);
  decoder.Append(FrameBytes(0, ""));
  EXPECT_EQ(decoder.Next().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(VerifyRequestTest, AcceptsWellFormedRequests) {
  Limits limits;
  const std::string frame = test::PutFrame(42, "key", "value");
  auto request = VerifyRequest(frame, limits);
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ((*request)->request_id(), 42u);
  EXPECT_EQ((*request)->operation_type(), Operation::Put);
  EXPECT_TRUE(CheckRequest(**request, limits).ok());
}

TEST(VerifyRequestTest, RefusesGarbageAndMismatchedLengths) {
  Limits limits;
  std::mt19937 random(1);
  for (int round = 0; round < 2000; ++round) {
    std::string body(8 + random() % 200, '\0');
    for (char& ch : body) ch = static_cast<char>(random());
    std::string frame = FrameBytes(static_cast<uint32_t>(body.size()), body);
    auto request = VerifyRequest(frame, limits);
    if (request.ok()) {
      // Random bytes may form a valid empty-ish table; it must then be safe to inspect.
      (void)CheckRequest(**request, limits);
    }
  }
  const std::string frame = test::GetFrame(1, "k");
  EXPECT_FALSE(VerifyRequest(frame.substr(0, frame.size() - 1), limits).ok());
  EXPECT_FALSE(VerifyRequest(frame + "x", limits).ok());
  EXPECT_FALSE(VerifyRequest("", limits).ok());
}

TEST(VerifyRequestTest, EveryTruncationIsRefused) {
  Limits limits;
  const std::string frame = test::PutFrame(9, "some-key", std::string(100, 'v'));
  for (size_t cut = 0; cut < frame.size(); ++cut) {
    std::string truncated = frame.substr(0, cut);
    if (truncated.size() >= 4) {
      // Keep the prefix consistent with the shorter body so only the content is cut.
      const uint32_t length = static_cast<uint32_t>(truncated.size() - 4);
      std::memcpy(truncated.data(), &length, 4);
    }
    EXPECT_FALSE(VerifyRequest(truncated, limits).ok()) << "cut at " << cut;
  }
}

// Found by frame_fuzzer: a union type without its value passes the
// verifier, and reading the operation then dereferenced null.
TEST(CheckRequestTest, OperationTypeWithoutOperationIsRefused) {
  Limits limits;
  for (Operation type : {Operation::Put, Operation::Get, Operation::Delete, Operation::Batch,
                         Operation::Scan, Operation::Watch, Operation::Unwatch,
                         Operation::GetVersion, Operation::Hello, Operation::Ping,
                         Operation::Stats}) {
    flatbuffers::FlatBufferBuilder builder;
    RequestBuilder request(builder);
    request.add_request_id(3);
    request.add_operation_type(type);
    builder.FinishSizePrefixed(request.Finish());
    auto verified = VerifyRequest(FrameOf(builder), limits);
    ASSERT_TRUE(verified.ok()) << verified.status();
    absl::Status status = CheckRequest(**verified, limits);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << EnumNameOperation(type);
  }
}

TEST(FrameDecoderTest, AppendingNothingIsHarmless) {
  FrameDecoder decoder(1024);
  decoder.Append("");
  auto frame = decoder.Next();
  ASSERT_TRUE(frame.ok());
  EXPECT_FALSE(frame->has_value());
}

TEST(CheckRequestTest, EnforcesLimits) {
  Limits limits;
  limits.max_key_bytes = 8;
  limits.max_value_bytes = 16;
  auto check = [&](const std::string& frame) {
    auto request = VerifyRequest(frame, limits);
    EXPECT_TRUE(request.ok());
    return request.ok() ? CheckRequest(**request, limits) : request.status();
  };
  EXPECT_TRUE(check(test::PutFrame(1, "12345678", "0123456789abcdef")).ok());
  absl::Status key = check(test::PutFrame(1, "123456789", "v"));
  EXPECT_EQ(key.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(key.message().find("max_key_bytes"), absl::string_view::npos);
  absl::Status value = check(test::PutFrame(1, "k", std::string(17, 'v')));
  EXPECT_NE(value.message().find("max_value_bytes"), absl::string_view::npos);
  EXPECT_EQ(check(test::GetFrame(1, "")).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(check(test::PutFrame(1, "k", "v", -5)).code(), absl::StatusCode::kInvalidArgument);
}

TEST(StatusMappingTest, RoundTripsEveryCode) {
  for (absl::StatusCode code :
       {absl::StatusCode::kOk, absl::StatusCode::kNotFound, absl::StatusCode::kInvalidArgument,
        absl::StatusCode::kFailedPrecondition, absl::StatusCode::kResourceExhausted,
        absl::StatusCode::kUnavailable, absl::StatusCode::kDataLoss,
        absl::StatusCode::kUnauthenticated, absl::StatusCode::kPermissionDenied,
        absl::StatusCode::kOutOfRange, absl::StatusCode::kUnimplemented,
        absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kAborted,
        absl::StatusCode::kInternal}) {
    EXPECT_EQ(FromWire(ToWire(code)), code) << absl::StatusCodeToString(code);
  }
}

TEST(StatusResponseTest, CarriesCodeAndMessage) {
  flatbuffers::FlatBufferBuilder builder;
  BuildStatusResponse(&builder, 5, absl::NotFoundError("no such key"));
  auto response = VerifyResponse(FrameOf(builder), 1 << 20);
  ASSERT_TRUE(response.ok());
  absl::Status status = StatusFromResponse(**response);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(status.message(), "no such key");
  EXPECT_EQ((*response)->request_id(), 5u);
  EXPECT_EQ((*response)->retry_after_ms(), 0);
  EXPECT_EQ(RetryAfterMs(status), 0);
}

TEST(StatusResponseTest, CarriesTheRetryHint) {
  flatbuffers::FlatBufferBuilder builder;
  BuildStatusResponse(&builder, 6,
                      WithRetryAfter(absl::ResourceExhaustedError("rate limit exceeded"), 1500));
  auto response = VerifyResponse(FrameOf(builder), 1 << 20);
  ASSERT_TRUE(response.ok());
  EXPECT_EQ((*response)->retry_after_ms(), 1500);
  absl::Status status = StatusFromResponse(**response);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RetryAfterMs(status), 1500);
}

}  // namespace
}  // namespace logkv::protocol
