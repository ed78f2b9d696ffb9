#include "server/control/raft_fsm.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <string>

namespace logkv::server::control {

RaftFsm::RaftFsm(ControlState* state) : state_(state), last_result_(uint64_t{0}) {
  fsm_.version = 1;
  fsm_.data = this;
  fsm_.apply = &RaftFsm::Apply;
  fsm_.snapshot = &RaftFsm::Snapshot;
  fsm_.restore = &RaftFsm::Restore;
  // Not read by version 1; null so that no later reading of a higher
  // version could call garbage.
  fsm_.snapshot_finalize = nullptr;
  fsm_.snapshot_async = nullptr;
}

const absl::StatusOr<uint64_t>& RaftFsm::ResultOf(const void* result) {
  return *static_cast<const absl::StatusOr<uint64_t>*>(result);
}

// No exception may cross into libraft (C): each callback turns the only one
// it can meet, an allocation failure, into RAFT_NOMEM.

int RaftFsm::Apply(struct raft_fsm* fsm, const struct raft_buffer* buf, void** result) {
  auto* self = static_cast<RaftFsm*>(fsm->data);
  try {
    self->last_result_ =
        self->state_->Apply(absl::string_view(static_cast<const char*>(buf->base), buf->len));
  } catch (const std::bad_alloc&) {
    return RAFT_NOMEM;
  }
  ++self->commands_applied_;
  *result = &self->last_result_;
  self->NotifyApplied();
  return 0;
}

void RaftFsm::NotifyApplied() {
  if (!on_applied_) return;
  try {
    on_applied_();
  } catch (...) {
    // Nothing may cross into libraft; the hook only publishes a copy of
    // the state, which the next apply publishes again.
  }
}

int RaftFsm::Snapshot(struct raft_fsm* fsm, struct raft_buffer* bufs[], unsigned* n_bufs) {
  auto* self = static_cast<RaftFsm*>(fsm->data);
  std::string bytes;
  try {
    bytes = self->state_->Snapshot();
  } catch (const std::bad_alloc&) {
    return RAFT_NOMEM;
  }
  auto* array = static_cast<struct raft_buffer*>(raft_malloc(sizeof(struct raft_buffer)));
  if (array == nullptr) return RAFT_NOMEM;
  array[0].len = bytes.size();
  array[0].base = raft_malloc(bytes.size());
  if (array[0].base == nullptr) {
    raft_free(array);
    return RAFT_NOMEM;
  }
  std::memcpy(array[0].base, bytes.data(), bytes.size());
  *bufs = array;
  *n_bufs = 1;
  ++self->snapshots_taken_;
  return 0;
}

int RaftFsm::Restore(struct raft_fsm* fsm, struct raft_buffer* buf) {
  auto* self = static_cast<RaftFsm*>(fsm->data);
  absl::Status status;
  try {
    status =
        self->state_->Restore(absl::string_view(static_cast<const char*>(buf->base), buf->len));
  } catch (const std::bad_alloc&) {
    return RAFT_NOMEM;
  }
  if (!status.ok()) return RAFT_MALFORMED;
  raft_free(buf->base);
  ++self->snapshots_restored_;
  self->NotifyApplied();
  return 0;
}

int ProposeCommand(struct raft* raft, struct raft_apply* req, absl::string_view command,
                   raft_apply_cb cb) {
  // libraft's disk backend (0.15) writes an entry padded to a multiple of
  // 8 bytes but reads it back at its stated length, so an entry of another
  // length makes the closed segment unreadable at the next start. Commands
  // are padded here with zeros, which the FlatBuffers verifier ignores.
  struct raft_buffer buf;
  buf.len = std::max<size_t>(8, (command.size() + 7) / 8 * 8);
  buf.base = raft_malloc(buf.len);
  if (buf.base == nullptr) return RAFT_NOMEM;
  std::memset(buf.base, 0, buf.len);
  if (!command.empty()) std::memcpy(buf.base, command.data(), command.size());
  int rv = raft_apply(raft, req, &buf, 1, cb);
  if (rv != 0) raft_free(buf.base);
  return rv;
}

}  // namespace logkv::server::control
