// libFuzzer target for the bytes a server receives: the frame decoder (its
// look ahead over the frames buffered too), the Request verifier and the
// limit checks. Built with -DLOGKV_FUZZ=ON and clang;
// tools/test.sh --fuzz runs it for a bounded number of inputs.
#include <cstddef>
#include <cstdint>

#include "protocol/frame.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  logkv::protocol::Limits limits;
  limits.max_frame_bytes = 1 << 20;
  logkv::protocol::FrameDecoder decoder(limits.max_frame_bytes);
  // Feed the input in two reads to exercise partial frames.
  const size_t split = size == 0 ? 0 : data[0] % (size + 1);
  for (size_t start : {size_t{0}, split}) {
    const size_t end = start == 0 ? split : size;
    decoder.Append(absl::string_view(reinterpret_cast<const char*>(data) + start, end - start));
    // The look ahead of a server's prefetch: every whole frame buffered.
    decoder.ForEachBufferedFrame([&limits](absl::string_view frame) {
      auto request = logkv::protocol::VerifyRequest(frame, limits);
      return request.ok();
    });
    while (true) {
      auto frame = decoder.Next();
      if (!frame.ok() || !frame->has_value()) break;
      auto request = logkv::protocol::VerifyRequest(**frame, limits);
      if (request.ok()) (void)logkv::protocol::CheckRequest(**request, limits);
    }
  }
  return 0;
}
