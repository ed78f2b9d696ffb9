// What a control-plane command carries besides its body
// (server/control/control.fbs, table Command): the conditions it applies
// under, and who asked for it, which its audit entry records
// (docs/security.md, "Audit log").
//
// Thread-safety: plain values.
#ifndef LOGKV_SERVER_CONTROL_COMMAND_OPTIONS_H_
#define LOGKV_SERVER_CONTROL_COMMAND_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"

namespace logkv::server::control {

// Who asked for a command and through which node. The proposing node fills
// it from what authenticated the request; the state machine only records it.
struct Actor {
  // Values are control.fbs's ActorKind and never change.
  enum class Kind : uint8_t {
    kUnknown = 0,        // not said (an older version's command)
    kUser = 1,           // an account, user_id
    kClusterSecret = 2,  // a caller holding the cluster secret
    kNode = 3,           // the node on its own: joining, leaving, its flags
    kAnonymous = 4,      // an unauthenticated caller: a sign-up
  };
  Kind kind = Kind::kUnknown;
  uint64_t user_id = 0;  // for kUser
  std::string node;      // the proposing node's id

  static Actor User(uint64_t user_id, absl::string_view node) {
    return Actor{Kind::kUser, user_id, std::string(node)};
  }
  static Actor ClusterSecret(absl::string_view node) {
    return Actor{Kind::kClusterSecret, 0, std::string(node)};
  }
  static Actor Node(absl::string_view node) { return Actor{Kind::kNode, 0, std::string(node)}; }
  static Actor Anonymous(absl::string_view node) {
    return Actor{Kind::kAnonymous, 0, std::string(node)};
  }

  bool operator==(const Actor&) const = default;
};

// How an audit entry names an actor (docs/security.md, "Audit log"):
// by=user user=3 username="alice" node="n1", by=cluster_secret node="n1",
// by=node node="n1", by=anonymous node="n1"; "" for kUnknown without a
// node. username: the account's, "" when not known.
std::string DescribeActor(const Actor& actor, absl::string_view username = "");

// The conditions a command applies under, and its actor.
struct CommandOptions {
  // Apply only at exactly this epoch.
  std::optional<uint64_t> if_epoch;
  // Apply only if the committed auth mode is unset or this (FailedPrecondition
  // otherwise): a node joins only a cluster of its own mode.
  std::optional<bool> requires_auth_on = std::nullopt;
  Actor actor = {};

  // No conditions, only the actor.
  static CommandOptions By(Actor actor) {
    CommandOptions options;
    options.actor = std::move(actor);
    return options;
  }
};

}  // namespace logkv::server::control

#endif  // LOGKV_SERVER_CONTROL_COMMAND_OPTIONS_H_
