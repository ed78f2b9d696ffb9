// What the encoders of the state machine's parts share (account_state,
// acl_state, kv_state): a command around its body, with the proposer's clock,
// and byte vectors. Private to logkv_control (it needs the generated header).
#ifndef LOGKV_SERVER_CONTROL_COMMAND_ENCODING_H_
#define LOGKV_SERVER_CONTROL_COMMAND_ENCODING_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "flatbuffers/flatbuffers.h"
#include "server/control/control_generated.h"

namespace logkv::server::control {

inline std::string FinishedBytes(const flatbuffers::FlatBufferBuilder& builder) {
  return std::string(reinterpret_cast<const char*>(builder.GetBufferPointer()), builder.GetSize());
}

// A Command holding body, finished in builder, as the bytes to hand to Raft.
template <typename T>
std::string EncodeBody(flatbuffers::FlatBufferBuilder& builder, fb::CommandBody type,
                       flatbuffers::Offset<T> body) {
  fb::CommandBuilder command(builder);
  command.add_body_type(type);
  command.add_body(body.Union());
  // The proposer's clock: the time of the command's audit entry (and of a
  // consensus key's write), so that applying reads no clock.
  command.add_at_ms(absl::ToUnixMillis(absl::Now()));
  builder.Finish(command.Finish(), fb::CommandIdentifier());
  return FinishedBytes(builder);
}

inline flatbuffers::Offset<flatbuffers::Vector<uint8_t>> ByteVector(
    flatbuffers::FlatBufferBuilder& builder, absl::string_view bytes) {
  return builder.CreateVector(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

}  // namespace logkv::server::control

#endif  // LOGKV_SERVER_CONTROL_COMMAND_ENCODING_H_
