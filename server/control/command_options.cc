#include "server/control/command_options.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace logkv::server::control {

std::string DescribeActor(const Actor& actor, absl::string_view username) {
  // Quoted and C-escaped: entries are ASCII whatever a name holds.
  auto quoted = [](absl::string_view text) {
    return absl::StrCat("\"", absl::CHexEscape(text), "\"");
  };
  std::string text;
  switch (actor.kind) {
    case Actor::Kind::kUser:
      text = absl::StrCat("by=user user=", actor.user_id);
      if (!username.empty()) absl::StrAppend(&text, " username=", quoted(username));
      break;
    case Actor::Kind::kClusterSecret:
      text = "by=cluster_secret";
      break;
    case Actor::Kind::kNode:
      text = "by=node";
      break;
    case Actor::Kind::kAnonymous:
      text = "by=anonymous";
      break;
    case Actor::Kind::kUnknown:
      break;
  }
  if (!actor.node.empty()) {
    absl::StrAppend(&text, text.empty() ? "" : " ", "node=", quoted(actor.node));
  }
  return text;
}

}  // namespace logkv::server::control
