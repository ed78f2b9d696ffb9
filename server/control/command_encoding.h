// The one place a command's envelope (control.fbs, table Command) is
// written: its body, the proposer's clock, its conditions and its actor.
// Private to logkv_control: it names the generated FlatBuffers types.
#ifndef LOGKV_SERVER_CONTROL_COMMAND_ENCODING_H_
#define LOGKV_SERVER_CONTROL_COMMAND_ENCODING_H_

#include <string>

#include "absl/strings/string_view.h"
#include "flatbuffers/flatbuffers.h"
#include "server/control/command_options.h"
#include "server/control/control_generated.h"

namespace logkv::server::control {

// Finishes builder with a Command of body (built in builder) and returns
// the bytes to hand to Raft.
std::string FinishCommand(flatbuffers::FlatBufferBuilder& builder, fb::CommandBody type,
                          flatbuffers::Offset<void> body, const CommandOptions& options = {});

// A [ubyte] field's bytes.
inline flatbuffers::Offset<flatbuffers::Vector<uint8_t>> ByteVector(
    flatbuffers::FlatBufferBuilder& builder, absl::string_view bytes) {
  return builder.CreateVector(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

}  // namespace logkv::server::control

#endif  // LOGKV_SERVER_CONTROL_COMMAND_ENCODING_H_
