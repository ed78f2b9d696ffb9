// The control plane's state machine (ControlState) as libraft's struct
// raft_fsm, version 1 of the interface (what libraft 0.15 calls
// synchronously from its loop):
//
//   apply     a committed RAFT_COMMAND entry -> ControlState::Apply. A command
//             the state machine refuses is still applied (the refusal is its
//             deterministic result), so apply fails only when memory does.
//             The result handed to raft_apply's callback points into this
//             adapter (ResultOf) and holds until the next apply: the
//             callback copies it.
//   snapshot  ControlState::Snapshot in one buffer from raft_malloc; libraft
//             owns and raft_frees the buffer and the array.
//   restore   ControlState::Restore; on success the buffer becomes ours and
//             is raft_freed here, on failure (RAFT_MALFORMED) libraft keeps
//             it.
//
// Thread-safety: libraft calls the fsm on its loop thread; ControlState
// itself may be read from any thread.
#ifndef LOGKV_SERVER_CONTROL_RAFT_FSM_H_
#define LOGKV_SERVER_CONTROL_RAFT_FSM_H_

// libraft's headers declare C functions without extern "C" of their own.
extern "C" {
#include <raft.h>
}

#include <cstdint>
#include <functional>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/control/control_state.h"

namespace logkv::server::control {

class RaftFsm {
 public:
  // state must outlive this adapter, and this adapter the raft instance that
  // uses fsm().
  explicit RaftFsm(ControlState* state);
  RaftFsm(const RaftFsm&) = delete;
  RaftFsm& operator=(const RaftFsm&) = delete;

  struct raft_fsm* fsm() { return &fsm_; }
  ControlState& state() { return *state_; }

  // Called on the loop thread after every command applied and snapshot
  // restored (it must not call into libraft). REQUIRES: before raft_start.
  void set_on_applied(std::function<void()> on_applied) { on_applied_ = std::move(on_applied); }

  // The command result behind raft_apply_cb's `result`.
  static const absl::StatusOr<uint64_t>& ResultOf(const void* result);

  // Counters, for tests and metrics (loop thread only).
  uint64_t commands_applied() const { return commands_applied_; }
  uint64_t snapshots_taken() const { return snapshots_taken_; }
  uint64_t snapshots_restored() const { return snapshots_restored_; }

 private:
  static int Apply(struct raft_fsm* fsm, const struct raft_buffer* buf, void** result);
  static int Snapshot(struct raft_fsm* fsm, struct raft_buffer* bufs[], unsigned* n_bufs);
  static int Restore(struct raft_fsm* fsm, struct raft_buffer* buf);
  void NotifyApplied();

  ControlState* state_;
  struct raft_fsm fsm_ {};
  absl::StatusOr<uint64_t> last_result_;
  std::function<void()> on_applied_;
  uint64_t commands_applied_ = 0;
  uint64_t snapshots_taken_ = 0;
  uint64_t snapshots_restored_ = 0;
};

// Proposes a command (an Encode* of control_state.h) on a leader: copies it
// into a buffer from raft_malloc, which libraft owns once raft_apply
// accepts it, and frees it if raft_apply refuses. Returns raft_apply's code
// (RAFT_NOTLEADER on a follower). req must live until cb fires.
int ProposeCommand(struct raft* raft, struct raft_apply* req, absl::string_view command,
                   raft_apply_cb cb);

}  // namespace logkv::server::control

#endif  // LOGKV_SERVER_CONTROL_RAFT_FSM_H_
