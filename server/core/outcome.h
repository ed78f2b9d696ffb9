// How an operation's answer comes back, shared by every layer that answers
// requests (the service, the cluster's peer operations, the net layer that
// sends the frames).
#ifndef LOGKV_SERVER_CORE_OUTCOME_H_
#define LOGKV_SERVER_CORE_OUTCOME_H_

#include <string>

#include "absl/functional/any_invocable.h"

namespace logkv::server {

enum class Outcome {
  kAnswered,  // the response frame is finished in the builder
  kDeferred,  // the completion will be called later, from another thread
};

// Called at most once, from any thread, with a finished response frame.
// Move-only: a completion that holds one pointer needs no allocation.
using Completion = absl::AnyInvocable<void(std::string frame)>;

}  // namespace logkv::server

#endif  // LOGKV_SERVER_CORE_OUTCOME_H_
