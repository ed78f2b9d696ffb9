#include "server/http/access_routes.h"

#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/control/acl_state.h"
#include "server/http/account_routes.h"
#include "server/http/status_http.h"
#include "server/namespaces.h"

namespace logkv::server::http {
namespace {

using Json = nlohmann::json;
using Deps = std::shared_ptr<const AccessRoutesDependencies>;

// Runs work on the pool: it waits for a commit.
void OnPool(const Deps& deps, Responder responder, std::function<HttpResponse()> work) {
  RunOnPool(deps->pool, std::move(responder), std::move(work));
}

// Who asks (the cluster secret or an administrator's key), for the audit log.
control::Actor AdminActor(const Deps& deps, const HttpRequest& request) {
  return RequestActor(deps->auth, request, deps->node_id ? deps->node_id() : "");
}

// ---- Reading requests --------------------------------------------------------------

// A body: a JSON object; an empty one is {}.
absl::StatusOr<Json> Body(const Deps& deps, const HttpRequest& request) {
  return ReadJsonObject(request, deps->max_json_depth, /*empty_is_object=*/true);
}

// A positive id from a path capture or a JSON value.
absl::StatusOr<uint64_t> IdOf(absl::string_view text, absl::string_view what) {
  uint64_t id = 0;
  if (!absl::SimpleAtoi(text, &id) || id == 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is a positive integer"));
  }
  return id;
}

absl::StatusOr<uint64_t> JsonId(const Json& value, absl::string_view what) {
  if (!value.is_number_unsigned() || value.get<uint64_t>() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is a positive integer"));
  }
  return value.get<uint64_t>();
}

// Absent: nullopt; present and not a boolean: an error.
absl::StatusOr<std::optional<bool>> OptionalBool(const Json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return std::optional<bool>();
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat("field \"", name, "\" must be true or false"));
  }
  return std::optional<bool>(it->get<bool>());
}

absl::StatusOr<std::vector<uint64_t>> IdList(const Json& body, const char* name) {
  std::vector<uint64_t> ids;
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return ids;
  if (!it->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat("field \"", name, "\" must be an array of ids"));
  }
  for (const Json& element : *it) {
    absl::StatusOr<uint64_t> id = JsonId(element, absl::StrCat("each of \"", name, "\""));
    if (!id.ok()) return id.status();
    ids.push_back(*id);
  }
  return ids;
}

// ---- Answers -----------------------------------------------------------------------

Json GroupJson(const control::Group& group) {
  std::vector<uint64_t> members(group.members.begin(), group.members.end());
  std::sort(members.begin(), members.end());
  return Json{{"id", group.id},
              {"name", group.name},
              {"members", members},
              {"created_at", auth::FormatRfc3339(group.created_at_ms)}};
}

Json UserAdminJson(const auth::User& user, const control::Access& access) {
  Json json = auth::UserJson(user);
  json["is_admin"] = access.IsAdmin(user.id);
  std::vector<uint64_t> groups;
  for (const auto& [id, group] : access.groups) {
    if (group.members.contains(user.id)) groups.push_back(id);
  }
  json["groups"] = groups;
  return json;
}

// The user's part of a prefix: text when it is UTF-8, else base64 beside.
void PutPrefix(Json* json, absl::string_view prefix) {
  if (IsValidUtf8(prefix)) {
    (*json)["prefix"] = std::string(prefix);
  } else {
    (*json)["prefix"] = EncodeBase64(prefix);
    (*json)["prefix_encoding"] = "base64";
  }
}

Json EntryJson(absl::string_view user_prefix, const control::AclEntry& entry,
               const control::Access& access) {
  Json json = Json::object();
  PutPrefix(&json, user_prefix);
  json["owner"] = entry.owner;
  if (entry.group_id == 0) {
    json["group"] = nullptr;
  } else {
    json["group"] = entry.group_id;
    auto it = access.groups.find(entry.group_id);
    if (it != access.groups.end()) json["group_name"] = it->second.name;
  }
  json["mode"] = control::ModeString(entry.mode);
  json["bits"] = entry.mode;
  json["audit"] = entry.audit;
  return json;
}

std::string PermissionString(uint32_t bits) {
  return control::ModeString(bits << control::kOwnerShift).substr(0, 4);
}

// ---- Who asks ----------------------------------------------------------------------

struct Caller {
  uint64_t user_id = 0;
  bool admin = false;
  bool may_write = false;
};

std::optional<Caller> Identify(const Deps& deps, const HttpRequest& request,
                               HttpResponse* refusal) {
  absl::StatusOr<Session> session = AuthenticateKey(deps->auth, request);
  if (!session.ok()) {
    *refusal = HttpResponse::Error(401, session.status().message());
    return std::nullopt;
  }
  if (absl::Status admitted = deps->auth.admission->Admit(session->user_id); !admitted.ok()) {
    *refusal = HttpResponse::Error(429, admitted.message());
    refusal->headers.emplace_back("Retry-After", "1");
    return std::nullopt;
  }
  return Caller{session->user_id, deps->auth.admission->IsAdmin(session->user_id),
                session->context.may_write};
}

const control::AclState& Acls(const Deps& deps) { return *deps->store->access(); }

// ---- Users -------------------------------------------------------------------------

void ListUsers(const Deps& deps, HttpRequest& request, Responder& responder) {
  if (HttpResponse refusal; !deps->authorize_admin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  std::vector<auth::User> users = deps->store->ListUsers();
  Json list = Json::array();
  Acls(deps).Read([&](const control::Access& access) {
    for (const auth::User& user : users) list.push_back(UserAdminJson(user, access));
    return 0;
  });
  responder.Send(JsonAnswer(200, Json{{"users", list}}));
}

HttpResponse UserAnswer(const Deps& deps, uint64_t user_id, int status, Json extra = {}) {
  absl::StatusOr<auth::User> user = deps->store->GetUser(user_id);
  if (!user.ok()) return StatusResponse(user.status());
  Json json = Acls(deps).Read(
      [&](const control::Access& access) { return UserAdminJson(*user, access); });
  if (extra.is_object()) json.update(extra);
  return JsonAnswer(status, json);
}

absl::Status SetAdmin(const Deps& deps, uint64_t user_id, bool admin,
                      const control::Actor& actor) {
  return deps->store
      ->ProposeAccess(control::EncodeSetAdmin(user_id, admin, actor),
                      [user_id, admin](const control::Access& a, uint64_t) {
                        return a.IsAdmin(user_id) == admin;
                      })
      .status();
}

void CreateUser(const Deps& deps, HttpRequest& request, Responder& responder) {
  if (HttpResponse refusal; !deps->authorize_admin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  absl::StatusOr<Json> body = Body(deps, request);
  if (!body.ok()) return responder.Send(BodyError(body.status()));
  std::string fields[3];
  const char* names[3] = {"email", "username", "password"};
  for (int i = 0; i < 3; ++i) {
    auto it = body->find(names[i]);
    if (it == body->end() || !it->is_string()) {
      return responder.Send(HttpResponse::Error(
          400, absl::StrCat("field \"", names[i], "\" is required and must be a string")));
    }
    fields[i] = it->get<std::string>();
  }
  absl::StatusOr<std::optional<bool>> admin = OptionalBool(*body, "is_admin");
  if (!admin.ok()) return responder.Send(StatusResponse(admin.status()));
  OnPool(deps, std::move(responder),
         [deps, email = fields[0], username = fields[1], password = fields[2],
          admin = admin->value_or(false), actor = AdminActor(deps, request)]() {
           absl::StatusOr<auth::User> user =
               deps->store->SignUp(email, username, password, actor);
           if (!user.ok()) return StatusResponse(user.status());
           if (admin) {
             if (absl::Status status = SetAdmin(deps, user->id, true, actor); !status.ok()) {
               return StatusResponse(status);
             }
           }
           return UserAnswer(deps, user->id, 201);
         });
}

void GetUser(const Deps& deps, HttpRequest& request, Responder& responder) {
  if (HttpResponse refusal; !deps->authorize_admin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  absl::StatusOr<uint64_t> id = IdOf(request.params[0], "a user id");
  if (!id.ok()) return responder.Send(StatusResponse(id.status()));
  Json keys = Json::array();
  for (const auth::ApiKeyInfo& key : deps->store->ListApiKeys(*id)) {
    keys.push_back(auth::ApiKeyJson(key));
  }
  responder.Send(UserAnswer(deps, *id, 200, Json{{"api_keys", keys}}));
}

// PUT: {"is_active"?, "is_admin"?, "reset_keys"?}; DELETE: deactivates and
// revokes every key.
void ChangeUser(const Deps& deps, HttpRequest& request, Responder& responder, bool remove) {
  if (HttpResponse refusal; !deps->authorize_admin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  absl::StatusOr<uint64_t> id = IdOf(request.params[0], "a user id");
  if (!id.ok()) return responder.Send(StatusResponse(id.status()));
  std::optional<bool> active, admin, reset;
  if (remove) {
    active = false;
    reset = true;
  } else {
    absl::StatusOr<Json> body = Body(deps, request);
    if (!body.ok()) return responder.Send(BodyError(body.status()));
    for (auto [name, out] : {std::pair{"is_active", &active}, std::pair{"is_admin", &admin},
                             std::pair{"reset_keys", &reset}}) {
      absl::StatusOr<std::optional<bool>> value = OptionalBool(*body, name);
      if (!value.ok()) return responder.Send(StatusResponse(value.status()));
      *out = *value;
    }
  }
  if (*id == control::kFirstUserId && ((active && !*active) || (admin && !*admin))) {
    return responder.Send(HttpResponse::Error(
        409, "the first account is the cluster's administrator: it cannot be deactivated "
             "or made an ordinary user"));
  }
  const control::Actor actor = AdminActor(deps, request);
  OnPool(deps, std::move(responder), [deps, id = *id, active, admin, reset, actor]() {
    if (absl::StatusOr<auth::User> user = deps->store->GetUser(id); !user.ok()) {
      return StatusResponse(user.status());
    }
    if (active) {
      if (absl::Status status = deps->store->SetUserActive(id, *active, actor); !status.ok()) {
        return StatusResponse(status);
      }
    }
    if (admin) {
      if (absl::Status status = SetAdmin(deps, id, *admin, actor); !status.ok()) {
        return StatusResponse(status);
      }
    }
    size_t revoked = 0;
    if (reset && *reset) {
      absl::StatusOr<size_t> count = deps->store->RevokeAllApiKeys(id, actor);
      if (!count.ok()) return StatusResponse(count.status());
      revoked = *count;
      // And the tokens: with a refresh token left working, whoever held the
      // keys would mint new ones.
      if (absl::Status status = deps->store->EndSessions(id, actor); !status.ok()) {
        return StatusResponse(status);
      }
    }
    return UserAnswer(deps, id, 200, Json{{"api_keys_revoked", revoked}});
  });
}

// ---- Groups ------------------------------------------------------------------------

HttpResponse GroupAnswer(const Deps& deps, uint64_t group_id, int status) {
  return Acls(deps).Read([&](const control::Access& access) {
    auto it = access.groups.find(group_id);
    if (it == access.groups.end()) {
      return HttpResponse::Error(404, absl::StrCat("group ", group_id, " not found"));
    }
    return JsonAnswer(status, GroupJson(it->second));
  });
}

absl::Status SetMember(const Deps& deps, uint64_t group_id, uint64_t user_id, bool member,
                       const control::Actor& actor) {
  return deps->store
      ->ProposeAccess(control::EncodeSetGroupMember(group_id, user_id, member, actor),
                      [group_id, user_id, member](const control::Access& a, uint64_t) {
                        return !a.groups.contains(group_id) ||
                               a.InGroup(user_id, group_id) == member;
                      })
      .status();
}

// Adds and removes members, in that order; the first refusal answers.
absl::Status ChangeMembers(const Deps& deps, uint64_t group_id, const std::vector<uint64_t>& add,
                           const std::vector<uint64_t>& remove, const control::Actor& actor) {
  for (uint64_t user : add) {
    if (absl::Status status = SetMember(deps, group_id, user, true, actor); !status.ok()) {
      return status;
    }
  }
  for (uint64_t user : remove) {
    if (absl::Status status = SetMember(deps, group_id, user, false, actor); !status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

void ListGroups(const Deps& deps, HttpRequest& request, Responder& responder) {
  if (HttpResponse refusal; !deps->authorize_admin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  Json list = Acls(deps).Read([](const control::Access& access) {
    Json groups = Json::array();
    for (const auto& [id, group] : access.groups) groups.push_back(GroupJson(group));
    return groups;
  });
  responder.Send(JsonAnswer(200, Json{{"groups", list}}));
}

absl::StatusOr<std::optional<std::string>> OptionalName(const Json& body) {
  auto it = body.find("name");
  if (it == body.end() || it->is_null()) return std::optional<std::string>();
  if (!it->is_string()) return absl::InvalidArgumentError("field \"name\" must be a string");
  return std::optional<std::string>(it->get<std::string>());
}

void CreateGroup(const Deps& deps, HttpRequest& request, Responder& responder) {
  if (HttpResponse refusal; !deps->authorize_admin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  absl::StatusOr<Json> body = Body(deps, request);
  if (!body.ok()) return responder.Send(BodyError(body.status()));
  absl::StatusOr<std::optional<std::string>> name = OptionalName(*body);
  if (!name.ok()) return responder.Send(StatusResponse(name.status()));
  if (!name->has_value()) return responder.Send(HttpResponse::Error(400, "missing field \"name\""));
  absl::StatusOr<std::vector<uint64_t>> members = IdList(*body, "members");
  if (!members.ok()) return responder.Send(StatusResponse(members.status()));
  const control::Actor actor = AdminActor(deps, request);
  OnPool(deps, std::move(responder), [deps, name = **name, members = *members, actor]() {
    absl::StatusOr<uint64_t> id = deps->store->ProposeAccess(
        control::EncodeCreateGroup(name, deps->store->Now(), actor),
        [](const control::Access& a, uint64_t id) { return a.groups.contains(id); });
    if (!id.ok()) return StatusResponse(id.status());
    if (absl::Status status = ChangeMembers(deps, *id, members, {}, actor); !status.ok()) {
      return StatusResponse(status);
    }
    return GroupAnswer(deps, *id, 201);
  });
}

void GetGroup(const Deps& deps, HttpRequest& request, Responder& responder) {
  if (HttpResponse refusal; !deps->authorize_admin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  absl::StatusOr<uint64_t> id = IdOf(request.params[0], "a group id");
  if (!id.ok()) return responder.Send(StatusResponse(id.status()));
  responder.Send(GroupAnswer(deps, *id, 200));
}

// PUT {"name"?, "add"?: [user ids], "remove"?: [user ids]}.
void UpdateGroup(const Deps& deps, HttpRequest& request, Responder& responder) {
  if (HttpResponse refusal; !deps->authorize_admin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  absl::StatusOr<uint64_t> id = IdOf(request.params[0], "a group id");
  if (!id.ok()) return responder.Send(StatusResponse(id.status()));
  absl::StatusOr<Json> body = Body(deps, request);
  if (!body.ok()) return responder.Send(BodyError(body.status()));
  absl::StatusOr<std::optional<std::string>> name = OptionalName(*body);
  if (!name.ok()) return responder.Send(StatusResponse(name.status()));
  absl::StatusOr<std::vector<uint64_t>> add = IdList(*body, "add");
  if (!add.ok()) return responder.Send(StatusResponse(add.status()));
  absl::StatusOr<std::vector<uint64_t>> remove = IdList(*body, "remove");
  if (!remove.ok()) return responder.Send(StatusResponse(remove.status()));
  OnPool(deps, std::move(responder),
         [deps, id = *id, name = *name, add = *add, remove = *remove,
          actor = AdminActor(deps, request)]() {
           if (name.has_value()) {
             absl::StatusOr<uint64_t> renamed = deps->store->ProposeAccess(
                 control::EncodeRenameGroup(id, *name, actor),
                 [id, name](const control::Access& a, uint64_t) {
                   auto it = a.groups.find(id);
                   return it == a.groups.end() || it->second.name == *name;
                 });
             if (!renamed.ok()) return StatusResponse(renamed.status());
           }
           if (absl::Status status = ChangeMembers(deps, id, add, remove, actor); !status.ok()) {
             return StatusResponse(status);
           }
           return GroupAnswer(deps, id, 200);
         });
}

void DeleteGroup(const Deps& deps, HttpRequest& request, Responder& responder) {
  if (HttpResponse refusal; !deps->authorize_admin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  absl::StatusOr<uint64_t> id = IdOf(request.params[0], "a group id");
  if (!id.ok()) return responder.Send(StatusResponse(id.status()));
  OnPool(deps, std::move(responder), [deps, id = *id, actor = AdminActor(deps, request)]() {
    absl::StatusOr<uint64_t> deleted = deps->store->ProposeAccess(
        control::EncodeDeleteGroup(id, actor),
        [id](const control::Access& a, uint64_t) { return !a.groups.contains(id); });
    if (!deleted.ok()) return StatusResponse(deleted.status());
    return JsonAnswer(200, Json{{"id", id}, {"deleted", true}});
  });
}

// POST /api/groups/{id}/members {"user_id"}; DELETE .../members/{user}.
void ChangeMember(const Deps& deps, HttpRequest& request, Responder& responder, bool add) {
  if (HttpResponse refusal; !deps->authorize_admin(request, &refusal)) {
    return responder.Send(std::move(refusal));
  }
  absl::StatusOr<uint64_t> id = IdOf(request.params[0], "a group id");
  if (!id.ok()) return responder.Send(StatusResponse(id.status()));
  absl::StatusOr<uint64_t> user = absl::InvalidArgumentError("missing user id");
  if (add) {
    absl::StatusOr<Json> body = Body(deps, request);
    if (!body.ok()) return responder.Send(BodyError(body.status()));
    auto it = body->find("user_id");
    user = it == body->end() ? absl::InvalidArgumentError("missing field \"user_id\"")
                             : JsonId(*it, "\"user_id\"");
  } else {
    user = IdOf(request.params[1], "a user id");
  }
  if (!user.ok()) return responder.Send(StatusResponse(user.status()));
  const control::Actor actor = AdminActor(deps, request);
  OnPool(deps, std::move(responder), [deps, id = *id, user = *user, add, actor]() {
    if (absl::Status status = SetMember(deps, id, user, add, actor); !status.ok()) {
      return StatusResponse(status);
    }
    return GroupAnswer(deps, id, 200);
  });
}

// ---- ACLs --------------------------------------------------------------------------

// Whose namespace (?namespace=, default the caller's) and which prefix
// (?prefix=, the user's part; absent: none given).
struct AclTarget {
  uint64_t namespace_user = 0;
  std::optional<std::string> prefix;
  std::string engine_prefix;  // with the namespace, when prefix is given
  control::Actor actor;       // the caller, for the audit log
  bool admin = false;         // the caller is an administrator
};

// The caller and target of an ACL route, or the refusal: 401 without a key,
// 403 unless the caller is the namespace's user or an administrator (and,
// to change, holds the write scope).
std::optional<AclTarget> AclRequest(const Deps& deps, const HttpRequest& request, bool change,
                                    HttpResponse* refusal) {
  std::optional<Caller> caller = Identify(deps, request, refusal);
  if (!caller) return std::nullopt;
  AclTarget target;
  target.namespace_user = caller->user_id;
  target.actor = control::Actor::User(caller->user_id, deps->node_id ? deps->node_id() : "");
  target.admin = caller->admin;
  if (std::optional<std::string> ns = request.QueryParam("namespace"); ns.has_value()) {
    absl::StatusOr<uint64_t> id = IdOf(*ns, "?namespace= (a user id)");
    if (!id.ok()) {
      *refusal = StatusResponse(id.status());
      return std::nullopt;
    }
    target.namespace_user = *id;
  }
  if (target.namespace_user != caller->user_id && !caller->admin) {
    *refusal = HttpResponse::Error(
        403, "only the namespace's user or an administrator may see or change its ACLs");
    return std::nullopt;
  }
  if (change && !caller->may_write) {
    *refusal = HttpResponse::Error(403, "this API key may not write (missing scope)");
    return std::nullopt;
  }
  target.prefix = request.QueryParam("prefix");
  if (!target.prefix.has_value()) {
    // ?path=/home/room/: the /kv/{path} dialect's spelling; that dialect
    // keeps the path after "/kv/", so the leading '/' is not in the key.
    target.prefix = request.QueryParam("path");
    if (target.prefix.has_value() && !target.prefix->empty() && target.prefix->front() == '/') {
      target.prefix->erase(0, 1);
    }
  }
  if (target.prefix.has_value()) {
    if (!target.prefix->empty() && IsReservedKey(*target.prefix)) {
      *refusal = HttpResponse::Error(400, "keys beginning with byte 0x00 are reserved");
      return std::nullopt;
    }
    if (target.prefix->size() > control::kMaxAclPrefixBytes) {
      *refusal = HttpResponse::Error(
          413, absl::StrCat("an ACL prefix has at most ", control::kMaxAclPrefixBytes, " bytes"));
      return std::nullopt;
    }
    target.engine_prefix = absl::StrCat(TenantPrefix(target.namespace_user), *target.prefix);
  } else if (change) {
    *refusal = HttpResponse::Error(400, "missing ?prefix= (the key prefix the ACL is on)");
    return std::nullopt;
  }
  return target;
}

void GetAcl(const Deps& deps, HttpRequest& request, Responder& responder) {
  HttpResponse refusal;
  std::optional<AclTarget> target = AclRequest(deps, request, false, &refusal);
  if (!target) return responder.Send(std::move(refusal));
  const std::string ns = TenantPrefix(target->namespace_user);
  Json json = Acls(deps).Read([&](const control::Access& access) {
    Json out = Json::object();
    out["namespace"] = target->namespace_user;
    if (!target->prefix.has_value()) {
      // Every entry of the namespace, in prefix order.
      Json entries = Json::array();
      for (auto it = access.acls.lower_bound(ns);
           it != access.acls.end() && it->first.compare(0, ns.size(), ns) == 0; ++it) {
        entries.push_back(EntryJson(absl::string_view(it->first).substr(ns.size()), it->second,
                                    access));
      }
      out["entries"] = entries;
      return out;
    }
    PutPrefix(&out, *target->prefix);
    auto exact = access.acls.find(target->engine_prefix);
    out["acl"] = exact == access.acls.end()
                     ? Json(nullptr)
                     : EntryJson(*target->prefix, exact->second, access);
    // What decides for keys at this prefix: the longest entry, or the default.
    absl::string_view governing;
    const control::AclEntry* entry = access.Longest(target->engine_prefix, &governing);
    if (entry != nullptr) {
      out["effective"] = EntryJson(governing.substr(ns.size()), *entry, access);
    } else {
      control::AclEntry fallback;
      fallback.owner = target->namespace_user;
      fallback.mode = control::kPermAll << control::kOwnerShift;
      Json effective = EntryJson("", fallback, access);
      effective["default"] = true;
      out["effective"] = effective;
    }
    return out;
  });
  responder.Send(JsonAnswer(200, json));
}

// Whether the keys at engine_prefix are audited, as this node applied the
// entries (the command checks again as it applies): by its own entry, else
// the longest above it.
bool Audited(const Deps& deps, const std::string& engine_prefix) {
  return Acls(deps).Read(
      [&engine_prefix](const control::Access& a) { return control::AuditedAt(a, engine_prefix); });
}

// PUT {"mode", "owner"?, "group"?: id or name or null, "audit"?}.
void SetAcl(const Deps& deps, HttpRequest& request, Responder& responder) {
  HttpResponse refusal;
  std::optional<AclTarget> target = AclRequest(deps, request, true, &refusal);
  if (!target) return responder.Send(std::move(refusal));
  absl::StatusOr<Json> body = Body(deps, request);
  if (!body.ok()) return responder.Send(BodyError(body.status()));
  control::AclEntry entry;
  entry.owner = target->namespace_user;
  auto mode = body->find("mode");
  if (mode == body->end()) return responder.Send(HttpResponse::Error(400, "missing field \"mode\""));
  if (mode->is_string()) {
    absl::StatusOr<uint32_t> parsed = control::ParseMode(mode->get<std::string>());
    if (!parsed.ok()) return responder.Send(StatusResponse(parsed.status()));
    entry.mode = *parsed;
  } else if (mode->is_number_unsigned() && mode->get<uint64_t>() <= control::kMaxMode) {
    entry.mode = static_cast<uint32_t>(mode->get<uint64_t>());
  } else {
    return responder.Send(HttpResponse::Error(
        400, "field \"mode\" is 12 letters (\"cdwr--wr---r\"), 3 hex digits or 0..4095"));
  }
  if (auto owner = body->find("owner"); owner != body->end() && !owner->is_null()) {
    absl::StatusOr<uint64_t> id = JsonId(*owner, "\"owner\" (a user id)");
    if (!id.ok()) return responder.Send(StatusResponse(id.status()));
    entry.owner = *id;
  }
  if (auto group = body->find("group"); group != body->end() && !group->is_null()) {
    if (group->is_string()) {
      const std::string name = group->get<std::string>();
      entry.group_id = Acls(deps).Read([&name](const control::Access& a) -> uint64_t {
        auto it = a.group_by_name.find(name);
        return it == a.group_by_name.end() ? 0 : it->second;
      });
      if (entry.group_id == 0) {
        return responder.Send(HttpResponse::Error(404, absl::StrCat("no group named \"", name, "\"")));
      }
    } else {
      absl::StatusOr<uint64_t> id = JsonId(*group, "\"group\" (a group id or name)");
      if (!id.ok()) return responder.Send(StatusResponse(id.status()));
      entry.group_id = *id;
    }
  }
  absl::StatusOr<std::optional<bool>> audit = OptionalBool(*body, "audit");
  if (!audit.ok()) return responder.Send(StatusResponse(audit.status()));
  // Without "audit" the entry takes the flag that decides for its prefix as
  // the command applies (its own, or the one above): a change that names no
  // flag changes none. Only an administrator changes whether keys are
  // audited (the command checks again as it applies).
  const bool keep_audit = !audit->has_value();
  entry.audit = audit->value_or(false);
  if (!keep_audit && entry.audit != Audited(deps, target->engine_prefix) && !target->admin) {
    return responder.Send(StatusResponse(control::AuditFlagIsAdministrators()));
  }
  OnPool(deps, std::move(responder), [deps, target = *target, entry, keep_audit]() {
    absl::StatusOr<uint64_t> set = deps->store->ProposeAccess(
        control::EncodeSetAcl(target.engine_prefix, entry, target.actor, keep_audit),
        [&target, &entry, keep_audit](const control::Access& a, uint64_t) {
          auto it = a.acls.find(target.engine_prefix);
          return it != a.acls.end() && it->second.owner == entry.owner &&
                 it->second.group_id == entry.group_id && it->second.mode == entry.mode &&
                 (keep_audit || it->second.audit == entry.audit);
        });
    if (!set.ok()) return StatusResponse(set.status());
    Json json = Acls(deps).Read([&](const control::Access& access) {
      auto it = access.acls.find(target.engine_prefix);
      return EntryJson(*target.prefix, it != access.acls.end() ? it->second : entry, access);
    });
    json["namespace"] = target.namespace_user;
    return JsonAnswer(200, json);
  });
}

void RemoveAcl(const Deps& deps, HttpRequest& request, Responder& responder) {
  HttpResponse refusal;
  std::optional<AclTarget> target = AclRequest(deps, request, true, &refusal);
  if (!target) return responder.Send(std::move(refusal));
  // Removed, its keys are decided by the entry above it: only an
  // administrator may change whether they are audited that way.
  if (!target->admin && Acls(deps).Read([&target](const control::Access& a) {
        return control::AuditedAt(a, target->engine_prefix) !=
               control::AuditedAbove(a, target->engine_prefix);
      })) {
    return responder.Send(StatusResponse(control::AuditFlagIsAdministrators()));
  }
  OnPool(deps, std::move(responder), [deps, target = *target]() {
    absl::StatusOr<uint64_t> removed = deps->store->ProposeAccess(
        control::EncodeRemoveAcl(target.engine_prefix, target.actor),
        [&target](const control::Access& a, uint64_t) {
          return !a.acls.contains(target.engine_prefix);
        });
    if (!removed.ok()) return StatusResponse(removed.status());
    Json json = Json::object();
    PutPrefix(&json, *target.prefix);
    json["namespace"] = target.namespace_user;
    json["removed"] = true;
    return JsonAnswer(200, json);
  });
}

// What a caller may do at a prefix of a namespace: GET /api/acl/check.
void CheckAcl(const Deps& deps, HttpRequest& request, Responder& responder) {
  HttpResponse refusal;
  std::optional<Caller> caller = Identify(deps, request, &refusal);
  if (!caller) return responder.Send(std::move(refusal));
  uint64_t ns = caller->user_id;
  if (std::optional<std::string> text = request.QueryParam("namespace"); text.has_value()) {
    absl::StatusOr<uint64_t> id = IdOf(*text, "?namespace= (a user id)");
    if (!id.ok()) return responder.Send(StatusResponse(id.status()));
    ns = *id;
  }
  const std::string key =
      absl::StrCat(TenantPrefix(ns), request.QueryParam("prefix").value_or(""));
  const uint32_t bits = deps->auth.admission->Allowed(caller->user_id, key);
  responder.Send(JsonAnswer(200, Json{{"namespace", ns},
                                      {"user", caller->user_id},
                                      {"permissions", PermissionString(bits)}}));
}

}  // namespace

void AddAccessRoutes(Router* router, AccessRoutesDependencies dependencies) {
  auto deps = std::make_shared<const AccessRoutesDependencies>(std::move(dependencies));
  auto route = [&](Method method, const char* pattern, auto handler, bool is_write) {
    router->Add(method, pattern,
                Guarded([deps, handler](HttpRequest& request, Responder& responder) {
                  handler(deps, request, responder);
                }),
                is_write);
  };
  route(Method::kGet, "/api/users", ListUsers, false);
  route(Method::kPost, "/api/users", CreateUser, true);
  route(Method::kGet, "/api/users/{id}", GetUser, false);
  route(Method::kPut, "/api/users/{id}",
        [](const Deps& d, HttpRequest& r, Responder& s) { ChangeUser(d, r, s, false); }, true);
  route(Method::kDelete, "/api/users/{id}",
        [](const Deps& d, HttpRequest& r, Responder& s) { ChangeUser(d, r, s, true); }, true);
  route(Method::kGet, "/api/groups", ListGroups, false);
  route(Method::kPost, "/api/groups", CreateGroup, true);
  route(Method::kGet, "/api/groups/{id}", GetGroup, false);
  route(Method::kPut, "/api/groups/{id}", UpdateGroup, true);
  route(Method::kDelete, "/api/groups/{id}", DeleteGroup, true);
  route(Method::kPost, "/api/groups/{id}/members",
        [](const Deps& d, HttpRequest& r, Responder& s) { ChangeMember(d, r, s, true); }, true);
  route(Method::kDelete, "/api/groups/{id}/members/{user}",
        [](const Deps& d, HttpRequest& r, Responder& s) { ChangeMember(d, r, s, false); }, true);
  route(Method::kGet, "/api/acl", GetAcl, false);
  route(Method::kPut, "/api/acl", SetAcl, true);
  route(Method::kDelete, "/api/acl", RemoveAcl, true);
  route(Method::kGet, "/api/acl/check", CheckAcl, false);
}

void AddAccessRoutesOff(Router* router) {
  auto off = [](HttpRequest&, Responder responder) {
    responder.Send(HttpResponse::Error(
        404, "accounts are off on this node: users, groups and ACLs need --auth=on"));
  };
  // The same routes as AddAccessRoutes: the router (and the API reference)
  // know them in either mode.
  const std::pair<Method, const char*> routes[] = {
      {Method::kGet, "/api/users"},
      {Method::kPost, "/api/users"},
      {Method::kGet, "/api/users/{id}"},
      {Method::kPut, "/api/users/{id}"},
      {Method::kDelete, "/api/users/{id}"},
      {Method::kGet, "/api/groups"},
      {Method::kPost, "/api/groups"},
      {Method::kGet, "/api/groups/{id}"},
      {Method::kPut, "/api/groups/{id}"},
      {Method::kDelete, "/api/groups/{id}"},
      {Method::kPost, "/api/groups/{id}/members"},
      {Method::kDelete, "/api/groups/{id}/members/{user}"},
      {Method::kGet, "/api/acl"},
      {Method::kPut, "/api/acl"},
      {Method::kDelete, "/api/acl"},
      {Method::kGet, "/api/acl/check"},
  };
  for (const auto& [method, pattern] : routes) router->Add(method, pattern, off);
}

}  // namespace logkv::server::http
