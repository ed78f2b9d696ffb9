// logkv: the command-line client, in the manner of redis-cli and etcdctl.
//
//   logkv [flags] put KEY VALUE      logkv put --key=KEY --value=VALUE
//   logkv [flags] put KEY -          the value is read from standard input
//   logkv [flags] get KEY            logkv get --key=KEY
//   logkv [flags] del KEY            logkv del --key=KEY
//   logkv [flags] scan [PREFIX]      --prefix --limit --keys_only --after
//   logkv [flags] watch [PREFIX]     --count=N stops after N events
//   logkv [flags] stats
//   logkv [flags] nodes              the cluster's members (HTTP GET /nodes)
//   logkv [flags] leave              the node leaves the cluster (POST /members/leave)
//   logkv [flags] join MEMBER        the node joins MEMBER's cluster (POST /join)
//   logkv [flags] remove-member ID   removes a member that died while joining
//   logkv [flags] ping
//   logkv help [COMMAND]             also logkv COMMAND --help
//   logkv [flags] backup create      the node at --http_target takes a backup (POST /api/backup)
//   logkv [flags] backup status      GET /api/backup/status
//   logkv backup list DIR            the backups in DIR (no node needed)
//   logkv backup verify PATH         reads every byte, checks every checksum
//   logkv backup restore PATH DIR    into an empty or new data directory
//   logkv [flags] audit verify       checks the audit log (GET /api/audit, or --data-dir)
//
// Flags may stand before or after the command, as --name=value or --name
// value, with dashes or underscores (--keys-only = --keys_only). The node is
// --target (default $LOGKV_TARGET, else 127.0.0.1:7070), or the first live
// node of --nodes=a:p,b:p.
//
// Output: get prints the value alone followed by a newline (bytes as stored,
// like redis-cli --raw). scan and watch print one line per item; a key or
// value holding a control character (a newline, a tab), starting with a
// double quote or not UTF-8 is printed in double quotes, C-escaped
// ("a\nb", "\x00\xff"), so every item stays on its line. --json prints one JSON object per line; each key
// and value comes with an encoding field, as etcdctl's JSON does:
// "value_encoding": "utf-8" when the bytes are UTF-8 text (given as they
// are), "base64" otherwise (standard base64 of the bytes). get --json of a
// missing key prints {"key": ..., "found": false, "error": ...}.
//
// Exit codes: 0 success, 1 key not found, 2 any other error (message on stderr).

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "logkv/client.h"
#include "protocol/version.h"
#include "nlohmann/json.hpp"
#include "server/backup/backup.h"
#include "server/control/audit_chain.h"
#include "server/http/http_fetch.h"

ABSL_FLAG(std::string, target, "",
          "Node to talk to, host:port (default $LOGKV_TARGET, else 127.0.0.1:7070).");
ABSL_FLAG(std::vector<std::string>, nodes, {},
          "Comma-separated host:port list; the first live one is used.");
ABSL_FLAG(bool, json, false,
          "Print results as JSON, one object per line; keys and values carry key_encoding and "
          "value_encoding: utf-8, or base64 for binary.");
ABSL_FLAG(absl::Duration, ttl, absl::ZeroDuration(), "put: expire the key after this (e.g. 10s).");
ABSL_FLAG(std::string, if_version, "",
          "put/del: only if the key's version is this (0 = the key must be absent).");
ABSL_FLAG(std::string, key, "", "The key (instead of the positional argument).");
ABSL_FLAG(std::string, value, "", "put: the value (instead of the positional argument).");
ABSL_FLAG(std::string, prefix, "", "scan/watch: only keys with this prefix.");
ABSL_FLAG(uint32_t, limit, 1000, "scan: most keys printed.");
ABSL_FLAG(bool, keys_only, false, "scan: print keys without values.");
ABSL_FLAG(std::string, after, "", "scan: continue after this key (the cursor a scan printed).");
ABSL_FLAG(int64_t, count, 0, "watch: stop after this many events (0 = run until interrupted).");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(5), "Connect and request timeout.");
ABSL_FLAG(std::string, token, "", "Auth token sent in Hello (default $LOGKV_TOKEN).");
ABSL_FLAG(std::string, cluster_secret, "",
          "nodes/leave: the cluster secret, sent as X-Cluster-Secret (default "
          "$LOGKV_CLUSTER_SECRET); leaving needs it, or --token with the administrator's key.");
ABSL_FLAG(bool, wait, true,
          "backup create: wait until the backup is finished and print it (--nowait: print its "
          "name and return).");
ABSL_FLAG(bool, tls, false,
          "Connect with TLS (the node runs with --tls-cert); default $LOGKV_TLS=1.");
ABSL_FLAG(std::string, cacert, "",
          "With --tls: PEM CA file the node's certificate must chain to (default $LOGKV_CACERT, "
          "else the system's CAs).");
ABSL_FLAG(std::string, cert, "",
          "With --tls: PEM client certificate, for a node with --tls-client-auth (default "
          "$LOGKV_CERT).");
// --key is the key of put/get/del: the certificate's key is --tls-key.
ABSL_FLAG(std::string, tls_key, "",
          "With --tls: PEM private key of --cert (default $LOGKV_TLS_KEY).");
ABSL_FLAG(std::string, tls_server_name, "",
          "With --tls: the name the node's certificate must carry (default: the host of "
          "--target).");
ABSL_FLAG(std::string, data_dir, "",
          "audit verify: check the audit log of this data directory (offline) instead of "
          "asking --http-target.");
ABSL_FLAG(std::string, public_key, "",
          "audit verify: the cluster's audit public key (64 hex digits) to check signatures "
          "against; default: the key the log names (trust on first use).");
ABSL_FLAG(std::string, http_target, "",
          "nodes/leave: the node's HTTP address, host:port (default $LOGKV_HTTP_TARGET, else "
          "127.0.0.1:8080).");

// Users, groups and ACLs (logkv user|group|acl; docs/security.md).
ABSL_FLAG(bool, admin, false, "user create/update: make the user an administrator.");
ABSL_FLAG(std::string, active, "", "user update: true or false (deactivate).");
ABSL_FLAG(bool, reset_keys, false, "user update: revoke every API key of the user.");
ABSL_FLAG(std::vector<std::string>, members, {}, "group create: user ids, comma-separated.");
ABSL_FLAG(std::string, group, "", "acl set: the ACL's group (id or name).");
ABSL_FLAG(uint64_t, owner, 0, "acl set: the ACL's owner (a user id; default the namespace's).");
ABSL_FLAG(bool, audit, false,
          "acl set: audit data writes under the prefix (--noaudit: not); an administrator's "
          "to change. Without either the entry takes the flag deciding for its prefix.");
ABSL_FLAG(uint64_t, namespace_user, 0,
          "acl: the user whose namespace the prefix is in (default: the --token's user).");

namespace logkv::cli {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitNotFound = 1;
constexpr int kExitError = 2;

// Each command's help: logkv help CMD, logkv CMD --help. The flags' texts
// and defaults come from the flag registry, so they are written once.
struct CommandHelp {
  const char* name;
  const char* alias;     // another name of the same command, or null
  const char* synopsis;  // after "logkv "
  const char* summary;   // one line, for the list of commands
  const char* description;
  std::vector<const char*> flags;  // the command's own flags
  bool connects;                   // talks the binary protocol (--target, --nodes, --token)
  bool http;                       // talks HTTP (--http-target, --cluster-secret)
  const char* example;
};

const std::vector<CommandHelp>& Commands() {
  static const auto* commands = new std::vector<CommandHelp>{
      {"put", nullptr, "put KEY VALUE  (or --key=KEY --value=VALUE)", "stores a value",
       "Stores VALUE under KEY and prints the new version (OK version=N). A VALUE of - reads "
       "the value from standard input, bytes as they come.",
       {"key", "value", "ttl", "if_version"}, true, false,
       "logkv put session:42 '{\"user\":7}' --ttl=30m"},
      {"get", nullptr, "get KEY  (or --key=KEY)", "prints a value",
       "Prints the value of KEY as stored, followed by a newline. Exit code 1 when the key is "
       "absent.",
       {"key"}, true, false, "logkv get session:42"},
      {"del", "delete", "del KEY  (or --key=KEY)", "deletes a key",
       "Deletes KEY (a tombstone is written; the key is absent from then on).",
       {"key", "if_version"}, true, false, "logkv del session:42 --if-version=3"},
      {"scan", nullptr, "scan [PREFIX]", "lists keys in order",
       "Prints the keys with PREFIX in key order, each with its value after a tab. When more "
       "keys remain, the cursor to continue from is printed on stderr.",
       {"prefix", "limit", "keys_only", "after"}, true, false,
       "logkv scan user: --limit=100 --keys-only"},
      {"watch", nullptr, "watch [PREFIX]", "prints changes as they happen",
       "Prints each put (PUT KEY VALUE) and delete (DEL KEY) of keys with PREFIX as it "
       "happens, until interrupted or --count events.",
       {"prefix", "count"}, true, false, "logkv watch config/ --count=10 --json"},
      {"stats", nullptr, "stats", "prints the node's counters",
       "Prints the node's counters: keys, segments, bytes, operations, connections, uptime.",
       {}, true, false, "logkv stats --target=10.0.0.5:7070"},
      {"nodes", nullptr, "nodes", "lists the cluster's members",
       "Lists the cluster's members as the node at --http-target sees them (GET /nodes).",
       {}, false, true, "logkv nodes --http-target=10.0.0.5:8080"},
      {"leave", nullptr, "leave", "the node leaves the cluster",
       "The node at --http-target leaves the cluster gracefully (POST /members/leave); its "
       "keys are handed to the others. Needs --cluster-secret, or --token with the "
       "administrator's key.",
       {}, false, true, "logkv leave --http-target=10.0.0.5:8080 --cluster-secret=S"},
      {"join", nullptr, "join MEMBER", "the node joins a cluster",
       "The node at --http-target joins the cluster of MEMBER (POST /join): a member's "
       "binary-protocol address (host:port) or the URL of its HTTP API (http://host:port, "
       "https://host:port when the cluster serves TLS; the node checks the member's "
       "certificate with its own peer CA). Needs --cluster-secret, or --token with the "
       "administrator's key.",
       {}, false, true,
       "logkv join https://10.0.0.5:8080 --http-target=10.0.0.9:8080 --cacert=ca.pem "
       "--cluster-secret=S"},
      {"remove-member", nullptr, "remove-member NODE_ID", "removes a member that died joining",
       "Removes NODE_ID from the cluster's committed configuration, through the node at "
       "--http-target (POST /members/remove). Only for a member that is still joining and is "
       "down (it died before it was filled): an active member leaves with logkv leave on "
       "itself. Needs --cluster-secret, or --token with the administrator's key.",
       {}, false, true,
       "logkv remove-member 10.0.0.9:7070 --http-target=10.0.0.5:8080 --cluster-secret=S"},
      {"backup", nullptr,
       "backup create | status | list DIR | verify PATH | restore PATH DATA_DIR",
       "takes, lists, checks and restores backups",
       "create: the node at --http-target takes a backup now (POST /api/backup). status: its "
       "last success, duration, size, next run and failures (GET /api/backup/status). list "
       "DIR: the backups in DIR, complete or not (local, no node needed). verify PATH: checks "
       "every file against the backup's checksums. restore PATH DATA_DIR: into an empty or new "
       "directory, then start logkvd --data-dir=DATA_DIR. create and status need "
       "--cluster-secret, or --token with the administrator's key.",
       {"wait"}, false, true, "logkv backup verify /var/backups/logkv/NAME.tar.zst"},
      {"user", nullptr,
       "user list | show ID | create EMAIL USERNAME PASSWORD | update ID | deactivate ID",
       "manages users (administrators)",
       "list: every user (GET /api/users). show: one, with its API keys. create: a user "
       "(--admin to make it an administrator). update: --active=true|false, --admin, "
       "--reset-keys (revokes every key). deactivate: disables the user and revokes its keys. "
       "Needs --token with an administrator's key (or --cluster-secret).",
       {"admin", "active", "reset_keys"}, false, true, "logkv user update 7 --reset-keys"},
      {"group", nullptr,
       "group list | show ID | create NAME | rename ID NAME | delete ID | add ID USER | "
       "remove ID USER",
       "manages groups and their members (administrators)",
       "Groups name sets of users that ACLs grant permissions to (GET/POST /api/groups, "
       "/api/groups/{id}, /api/groups/{id}/members). create takes --members=ID,ID. Needs "
       "--token with an administrator's key (or --cluster-secret).",
       {"members"}, false, true, "logkv group add 3 7"},
      {"acl", nullptr, "acl get PREFIX | set PREFIX MODE | rm PREFIX | list | check PREFIX",
       "shows and sets the access control lists of key prefixes",
       "MODE is owner, group and others, each \"cdwr\" (create, delete, write, read) or '-': "
       "cdwrcdwr---r lets the owner and the group do everything and others read (3 hex "
       "digits work too: ff1). set takes --group, --owner and --audit; --namespace-user "
       "names another user's namespace (its user and administrators only). check prints what "
       "the --token's user may do at PREFIX.",
       {"group", "owner", "audit", "namespace_user"}, false, true,
       "logkv acl set home/room/ cdwrcdwr---- --group=room"},
      {"audit", nullptr, "audit verify [--data-dir=DIR] [--public-key=HEX]",
       "checks the audit log's chain and signatures",
       "verify: reads the audit log of the node at --http-target (GET /api/audit, every page; "
       "needs --cluster-secret, or --token with the administrator's key), or offline the file "
       "in DIR/control/audit of a stopped node's --data-dir, and checks every entry's hash, "
       "its link to the one before, its signature, the anchor and the head. Prints the chain "
       "head, or names the first bad entry (exit code 2).",
       {"data_dir", "public_key"}, false, true,
       "logkv audit verify --data-dir=/var/lib/logkv --public-key=9f2c..."},
      {"ping", nullptr, "ping", "checks that the node answers",
       "Connects and pings the node; prints PONG.", {}, true, false, "logkv ping"},
      {"help", nullptr, "help [COMMAND]", "prints this list, or a command's help",
       "Prints the list of commands, or the usage, flags and an example of COMMAND (also "
       "logkv COMMAND --help).",
       {}, false, false, "logkv help scan"},
  };
  return *commands;
}

const CommandHelp* FindCommand(absl::string_view name) {
  for (const CommandHelp& command : Commands()) {
    if (name == command.name || (command.alias != nullptr && name == command.alias)) {
      return &command;
    }
  }
  return nullptr;
}

void AppendFlag(std::string* out, const char* name) {
  const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  if (flag == nullptr) return;
  std::string dashed(name);
  std::replace(dashed.begin(), dashed.end(), '_', '-');
  const std::string value = flag->DefaultValue();
  absl::StrAppend(out, "  --", dashed);
  if (!flag->IsOfType<bool>() && !value.empty()) absl::StrAppend(out, "  (default: ", value, ")");
  absl::StrAppend(out, "\n      ", flag->Help(), "\n");
}

std::string Usage() {
  std::string out =
      "usage: logkv [flags] COMMAND [ARGS]\n"
      "\n"
      "commands:\n";
  for (const CommandHelp& command : Commands()) {
    absl::StrAppend(&out, "  ", absl::StrFormat("%-8s", command.name), command.summary, "\n");
  }
  absl::StrAppend(&out,
                  "\n"
                  "logkv help COMMAND (or logkv COMMAND --help) shows a command's arguments, "
                  "flags and an example.\n"
                  "\n"
                  "flags of every command (before or after the command; dashes or underscores):\n");
  for (const char* name : {"target", "nodes", "json", "timeout", "token", "tls", "cacert", "cert",
                           "tls_key", "tls_server_name"}) {
    AppendFlag(&out, name);
  }
  absl::StrAppend(&out,
                  "  --version\n      Print the version and exit.\n"
                  "\n"
                  "exit codes: 0 ok, 1 key not found, 2 error\n");
  return out;
}

std::string CommandUsage(const CommandHelp& command) {
  std::string out = absl::StrCat("usage: logkv [flags] ", command.synopsis, "\n");
  if (command.alias != nullptr) absl::StrAppend(&out, "  (also: logkv ", command.alias, ")\n");
  absl::StrAppend(&out, "\n", command.description, "\n");
  if (!command.flags.empty()) {
    absl::StrAppend(&out, "\nflags:\n");
    for (const char* name : command.flags) AppendFlag(&out, name);
  }
  if (command.connects) {
    absl::StrAppend(&out, "\nconnection flags:\n");
    for (const char* name : {"target", "nodes", "timeout", "token", "tls", "cacert", "cert",
                             "tls_key", "tls_server_name"}) {
      AppendFlag(&out, name);
    }
  }
  if (command.http) {
    absl::StrAppend(&out, "\nconnection flags:\n");
    for (const char* name : {"http_target", "cluster_secret", "token", "timeout", "tls", "cacert",
                             "cert", "tls_key", "tls_server_name"}) {
      AppendFlag(&out, name);
    }
  }
  if (command.connects || command.http) {
    absl::StrAppend(&out, "\noutput:\n");
    AppendFlag(&out, "json");
  }
  absl::StrAppend(&out, "\nexample:\n  ", command.example, "\n");
  return out;
}

int Fail(absl::string_view message) {
  std::fprintf(stderr, "logkv: %.*s\n", static_cast<int>(message.size()), message.data());
  return kExitError;
}

int FailStatus(const absl::Status& status) {
  std::fprintf(stderr, "logkv: %s\n", status.ToString().c_str());
  return absl::IsNotFound(status) ? kExitNotFound : kExitError;
}

// Whether bytes are valid UTF-8 (nlohmann refuses anything else when dumping).
bool IsUtf8(absl::string_view bytes) {
  try {
    (void)nlohmann::json(std::string(bytes)).dump();
    return true;
  } catch (const nlohmann::json::type_error&) {
    return false;
  }
}

// A JSON string of bytes: as they are when they are UTF-8, C-escaped
// otherwise (the cursor's form, which --after takes back).
nlohmann::json JsonBytes(absl::string_view bytes) {
  if (IsUtf8(bytes)) return std::string(bytes);
  return std::string(absl::CHexEscape(bytes));
}

// Sets object[name] to bytes and object[name + "_encoding"] to how they are
// given: "utf-8" text as it is, or "base64" (RFC 4648, padded) for anything
// else, so binary keys and values survive JSON (as etcdctl's output does).
void SetBytes(nlohmann::json* object, const std::string& name, absl::string_view bytes) {
  if (IsUtf8(bytes)) {
    (*object)[name] = std::string(bytes);
    (*object)[name + "_encoding"] = "utf-8";
  } else {
    (*object)[name] = absl::Base64Escape(bytes);
    (*object)[name + "_encoding"] = "base64";
  }
}

// A key or value on a line of scan or watch: as it is, unless a control
// character (newline, tab, ...) would break the line, a leading double
// quote would make it look quoted, or it is not UTF-8 text; then
// double-quoted and C-escaped, as --after and CUnescape read it back
// (UTF-8 text beyond ASCII stays as it is, other bytes become \xNN).
std::string LineField(absl::string_view bytes) {
  const bool utf8 = IsUtf8(bytes);
  const bool plain =
      utf8 && (bytes.empty() || bytes.front() != '"') &&
      std::none_of(bytes.begin(), bytes.end(), [](char c) {
        const auto byte = static_cast<unsigned char>(c);
        return byte < 0x20 || byte == 0x7f;
      });
  if (plain) return std::string(bytes);
  return absl::StrCat("\"", utf8 ? absl::Utf8SafeCEscape(bytes) : absl::CHexEscape(bytes), "\"");
}

void PrintJson(const nlohmann::json& object) {
  std::fputs(object.dump().c_str(), stdout);
  std::fputc('\n', stdout);
}

void PrintRaw(absl::string_view bytes) { std::fwrite(bytes.data(), 1, bytes.size(), stdout); }

// The command line once flags are set: the command and its arguments, and
// the names of the flags given (so an empty --value= still counts).
struct Arguments {
  std::vector<std::string> positionals;
  absl::flat_hash_set<std::string> given;
  bool help = false;
  bool version = false;  // --version
};

// Splits argv into flags (set through Abseil's flag registry) and positional
// arguments, so flags may stand anywhere. Abseil's ParseCommandLine would
// exit with status 1 on a bad flag, which here means "not found".
absl::Status ParseArguments(int argc, char** argv, Arguments* arguments) {
  bool only_positionals = false;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    // "-5" is a value, not a flag: only "--x" and "-x" with a letter are flags.
    const bool is_flag = !only_positionals && arg.size() > 1 && arg[0] == '-' &&
                         (arg[1] == '-' || absl::ascii_isalpha(static_cast<unsigned char>(arg[1])));
    if (!is_flag) {
      arguments->positionals.emplace_back(arg.data(), arg.size());
      continue;
    }
    if (arg == "--") {
      only_positionals = true;
      continue;
    }
    absl::string_view body = arg.substr(arg[1] == '-' ? 2 : 1);
    const size_t equals = body.find('=');
    std::string name(body.substr(0, equals));
    for (char& c : name) {
      if (c == '-') c = '_';
    }
    if (name == "help" || name == "h") {
      arguments->help = true;
      continue;
    }
    if (name == "version") {
      arguments->version = true;
      continue;
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    bool negated = false;
    if (flag == nullptr && absl::StartsWith(name, "no")) {
      flag = absl::FindCommandLineFlag(name.substr(2));
      negated = flag != nullptr && flag->IsOfType<bool>();
      if (!negated) flag = nullptr;
    }
    if (flag == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    std::string value;
    if (equals != absl::string_view::npos) {
      if (negated) return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      value = std::string(body.substr(equals + 1));
    } else if (flag->IsOfType<bool>()) {
      value = negated ? "false" : "true";
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, "=", value, ": ", error));
    }
    arguments->given.insert(std::string(flag->Name()));
  }
  return absl::OkStatus();
}

// --token, else $LOGKV_TOKEN: the API key sent in Hello (and as X-API-Key).
std::string Token() {
  std::string token = absl::GetFlag(FLAGS_token);
  if (token.empty()) {
    if (const char* from_env = std::getenv("LOGKV_TOKEN"); from_env != nullptr) token = from_env;
  }
  return token;
}

// --tls, --cacert, --cert, --tls-key and --tls-server-name (each flag given
// wins over its LOGKV_<NAME>), for the binary protocol and HTTPS alike.
struct TlsFlags {
  bool on = false;
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  std::string server_name;
};

TlsFlags ReadTlsFlags() {
  auto setting = [](const absl::Flag<std::string>& flag, const char* environment) {
    std::string value = absl::GetFlag(flag);
    if (value.empty()) {
      if (const char* from_env = std::getenv(environment); from_env != nullptr) value = from_env;
    }
    return value;
  };
  TlsFlags tls;
  const char* tls_env = std::getenv("LOGKV_TLS");
  tls.on = absl::GetFlag(FLAGS_tls) ||
           (tls_env != nullptr && (std::string(tls_env) == "1" || std::string(tls_env) == "true"));
  tls.ca_file = setting(FLAGS_cacert, "LOGKV_CACERT");
  tls.cert_file = setting(FLAGS_cert, "LOGKV_CERT");
  tls.key_file = setting(FLAGS_tls_key, "LOGKV_TLS_KEY");
  tls.server_name = absl::GetFlag(FLAGS_tls_server_name);
  // A CA or a certificate given means TLS.
  if (!tls.ca_file.empty() || !tls.cert_file.empty()) tls.on = true;
  return tls;
}

absl::StatusOr<std::unique_ptr<Client>> ConnectFromFlags() {
  ClientOptions options;
  options.nodes = absl::GetFlag(FLAGS_nodes);
  if (options.nodes.empty()) {
    std::string target = absl::GetFlag(FLAGS_target);
    if (target.empty()) {
      const char* from_environment = std::getenv("LOGKV_TARGET");
      target = from_environment != nullptr && *from_environment != '\0' ? from_environment
                                                                        : "127.0.0.1:7070";
    }
    options.nodes.push_back(target);
  }
  const absl::Duration timeout = absl::GetFlag(FLAGS_timeout);
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--timeout must be positive");
  }
  options.connect_timeout = timeout;
  options.request_timeout = timeout;
  options.auth_token = Token();
  options.client_name = "logkv-cli";
  const TlsFlags tls = ReadTlsFlags();
  options.tls = tls.on;
  options.tls_ca_file = tls.ca_file;
  options.tls_cert_file = tls.cert_file;
  options.tls_key_file = tls.key_file;
  options.tls_server_name = tls.server_name;
  return Client::Connect(options);
}

// Hands out a command's arguments in order: each is taken from its flag
// when given (--key, --value: the seed's form), else from the next
// positional argument.
class ArgumentReader {
 public:
  ArgumentReader(const Arguments& arguments, absl::string_view command)
      : arguments_(arguments), command_(command) {}

  absl::StatusOr<std::string> Next(absl::string_view name, const absl::Flag<std::string>& flag,
                                   absl::string_view usage) {
    if (arguments_.given.contains(name)) return absl::GetFlag(flag);
    if (next_ < arguments_.positionals.size()) return arguments_.positionals[next_++];
    return absl::InvalidArgumentError(absl::StrCat(command_, " needs a ", name, ": logkv ", usage));
  }
  // Optional arguments: the flag's value (maybe its default) when absent.
  std::string NextOr(absl::string_view name, const absl::Flag<std::string>& flag) {
    if (arguments_.given.contains(name)) return absl::GetFlag(flag);
    if (next_ < arguments_.positionals.size()) return arguments_.positionals[next_++];
    return absl::GetFlag(flag);
  }
  absl::Status CheckAllUsed() const {
    if (next_ >= arguments_.positionals.size()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("unexpected argument \"", arguments_.positionals[next_], "\" for ", command_));
  }

 private:
  const Arguments& arguments_;
  const std::string command_;
  size_t next_ = 1;  // positionals[0] is the command
};

absl::StatusOr<std::optional<uint64_t>> IfVersion() {
  const std::string text = absl::GetFlag(FLAGS_if_version);
  if (text.empty()) return std::optional<uint64_t>();
  uint64_t version = 0;
  if (!absl::SimpleAtoi(text, &version)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--if_version=", text, " is not a version number"));
  }
  return std::optional<uint64_t>(version);
}

// Every byte of standard input, up to its end.
absl::StatusOr<std::string> ReadStandardInput() {
  std::string bytes;
  char buffer[65536];
  while (true) {
    const size_t n = std::fread(buffer, 1, sizeof(buffer), stdin);
    bytes.append(buffer, n);
    if (n < sizeof(buffer)) break;
  }
  if (std::ferror(stdin)) return absl::UnavailableError("reading the value from standard input failed");
  return bytes;
}

int Put(const Arguments& arguments) {
  ArgumentReader reader(arguments, "put");
  absl::StatusOr<std::string> key =
      reader.Next("key", FLAGS_key, "put KEY VALUE (or --key=K --value=V)");
  if (!key.ok()) return Fail(key.status().message());
  absl::StatusOr<std::string> value =
      reader.Next("value", FLAGS_value, "put KEY VALUE (or --key=K --value=V)");
  if (!value.ok()) return Fail(value.status().message());
  if (absl::Status all = reader.CheckAllUsed(); !all.ok()) return Fail(all.message());
  // "-" as the positional value (not --value=-, which stores a dash): the
  // value is standard input, every byte of it, like etcdctl put KEY < file.
  if (*value == "-" && !arguments.given.contains("value")) {
    absl::StatusOr<std::string> from_stdin = ReadStandardInput();
    if (!from_stdin.ok()) return Fail(from_stdin.status().ToString());
    value = *std::move(from_stdin);
  }
  PutOptions options;
  const absl::Duration ttl = absl::GetFlag(FLAGS_ttl);
  if (ttl < absl::ZeroDuration()) return Fail("--ttl must not be negative");
  if (ttl > absl::ZeroDuration()) {
    // A positive TTL under a millisecond still expires, rather than meaning "no expiry".
    options.ttl_ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(ttl));
  }
  absl::StatusOr<std::optional<uint64_t>> if_version = IfVersion();
  if (!if_version.ok()) return Fail(if_version.status().message());
  options.if_version = *if_version;
  absl::StatusOr<std::unique_ptr<Client>> connected = ConnectFromFlags();
  if (!connected.ok()) return Fail(connected.status().ToString());
  Client& client = **connected;
  absl::StatusOr<WriteResult> written = client.Put(*key, *value, options);
  if (!written.ok()) return FailStatus(written.status());
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json object = {{"ok", true}};
    SetBytes(&object, "key", *key);
    object["version"] = written->version;
    object["timestamp"] = written->timestamp;
    object["sequence"] = written->sequence;
    object["shard"] = written->shard;
    PrintJson(object);
  } else {
    std::printf("OK version=%llu\n", static_cast<unsigned long long>(written->version));
  }
  return kExitOk;
}

int Get(const Arguments& arguments) {
  ArgumentReader reader(arguments, "get");
  absl::StatusOr<std::string> key = reader.Next("key", FLAGS_key, "get KEY (or --key=K)");
  if (!key.ok()) return Fail(key.status().message());
  if (absl::Status all = reader.CheckAllUsed(); !all.ok()) return Fail(all.message());
  absl::StatusOr<std::unique_ptr<Client>> connected = ConnectFromFlags();
  if (!connected.ok()) return Fail(connected.status().ToString());
  Client& client = **connected;
  absl::StatusOr<Value> value = client.Get(*key);
  const bool json = absl::GetFlag(FLAGS_json);
  if (json && absl::IsNotFound(value.status())) {
    // An answer a script can parse as well as an exit code (1) to test.
    nlohmann::json object = nlohmann::json::object();
    SetBytes(&object, "key", *key);
    object["found"] = false;
    object["error"] = std::string(value.status().message());
    PrintJson(object);
    std::fprintf(stderr, "logkv: %s\n", value.status().ToString().c_str());
    return kExitNotFound;
  }
  if (!value.ok()) return FailStatus(value.status());
  if (json) {
    nlohmann::json object = nlohmann::json::object();
    SetBytes(&object, "key", *key);
    object["found"] = true;
    SetBytes(&object, "value", value->value);
    object["version"] = value->version;
    object["timestamp"] = value->timestamp;
    object["expiry_unix_ms"] = value->expiry_unix_ms;
    PrintJson(object);
  } else {
    PrintRaw(value->value);
    std::fputc('\n', stdout);
  }
  return kExitOk;
}

int Delete(const Arguments& arguments) {
  ArgumentReader reader(arguments, "del");
  absl::StatusOr<std::string> key = reader.Next("key", FLAGS_key, "del KEY (or --key=K)");
  if (!key.ok()) return Fail(key.status().message());
  if (absl::Status all = reader.CheckAllUsed(); !all.ok()) return Fail(all.message());
  DeleteOptions options;
  absl::StatusOr<std::optional<uint64_t>> if_version = IfVersion();
  if (!if_version.ok()) return Fail(if_version.status().message());
  options.if_version = *if_version;
  absl::StatusOr<std::unique_ptr<Client>> connected = ConnectFromFlags();
  if (!connected.ok()) return Fail(connected.status().ToString());
  Client& client = **connected;
  absl::StatusOr<WriteResult> written = client.Delete(*key, options);
  if (!written.ok()) return FailStatus(written.status());
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json object = {{"ok", true}};
    SetBytes(&object, "key", *key);
    object["version"] = written->version;
    PrintJson(object);
  } else {
    std::printf("OK\n");
  }
  return kExitOk;
}

int Scan(const Arguments& arguments) {
  ArgumentReader reader(arguments, "scan");
  ScanOptions options;
  options.prefix = reader.NextOr("prefix", FLAGS_prefix);
  if (absl::Status all = reader.CheckAllUsed(); !all.ok()) return Fail(all.message());
  options.limit = absl::GetFlag(FLAGS_limit);
  options.keys_only = absl::GetFlag(FLAGS_keys_only);
  std::string error;
  // The cursor is printed C-escaped (it is a key, maybe binary): undo that.
  if (!absl::CUnescape(absl::GetFlag(FLAGS_after), &options.after_key, &error)) {
    return Fail(absl::StrCat("--after: ", error));
  }
  absl::StatusOr<std::unique_ptr<Client>> connected = ConnectFromFlags();
  if (!connected.ok()) return Fail(connected.status().ToString());
  Client& client = **connected;
  absl::StatusOr<ScanPage> page = client.Scan(options);
  if (!page.ok()) return FailStatus(page.status());
  const bool json = absl::GetFlag(FLAGS_json);
  if (json) {
    nlohmann::json items = nlohmann::json::array();
    for (const ScanItem& item : page->items) {
      nlohmann::json entry = nlohmann::json::object();
      SetBytes(&entry, "key", item.key);
      entry["version"] = item.value.version;
      if (!options.keys_only) SetBytes(&entry, "value", item.value.value);
      items.push_back(std::move(entry));
    }
    PrintJson({{"items", std::move(items)}, {"next_cursor", JsonBytes(page->next_cursor)}});
    return kExitOk;
  }
  for (const ScanItem& item : page->items) {
    PrintRaw(LineField(item.key));
    if (!options.keys_only) {
      std::fputc('\t', stdout);
      PrintRaw(LineField(item.value.value));
    }
    std::fputc('\n', stdout);
  }
  if (!page->next_cursor.empty()) {
    // On stderr, so a pipe of keys stays clean.
    std::fprintf(stderr, "(more keys: continue with --after=%s)\n",
                 absl::CHexEscape(page->next_cursor).c_str());
  }
  return kExitOk;
}

int Watch(const Arguments& arguments) {
  ArgumentReader reader(arguments, "watch");
  const std::string prefix = reader.NextOr("prefix", FLAGS_prefix);
  if (absl::Status all = reader.CheckAllUsed(); !all.ok()) return Fail(all.message());
  const int64_t count = absl::GetFlag(FLAGS_count);
  const bool json = absl::GetFlag(FLAGS_json);
  int64_t seen = 0;
  absl::StatusOr<std::unique_ptr<Client>> connected = ConnectFromFlags();
  if (!connected.ok()) return Fail(connected.status().ToString());
  Client& client = **connected;
  absl::Status status = client.Watch(prefix, {}, [&](const Event& event) {
    const bool is_put = event.type == Event::Type::kPut;
    if (json) {
      nlohmann::json object = {{"type", is_put ? "put" : "delete"}};
      SetBytes(&object, "key", event.key);
      object["version"] = event.version;
      object["shard"] = event.shard;
      object["sequence"] = event.sequence;
      if (is_put) SetBytes(&object, "value", event.value);
      PrintJson(object);
    } else {
      std::fputs(is_put ? "PUT " : "DEL ", stdout);
      PrintRaw(LineField(event.key));
      if (is_put) {
        std::fputc(' ', stdout);
        PrintRaw(LineField(event.value));
      }
      std::fputc('\n', stdout);
    }
    // Someone reading a pipe wants each event as it happens.
    std::fflush(stdout);
    ++seen;
    return count <= 0 || seen < count;
  });
  if (!status.ok()) return FailStatus(status);
  return kExitOk;
}

int Stats() {
  absl::StatusOr<std::unique_ptr<Client>> connected = ConnectFromFlags();
  if (!connected.ok()) return Fail(connected.status().ToString());
  Client& client = **connected;
  absl::StatusOr<ServerStats> stats = client.Stats();
  if (!stats.ok()) return FailStatus(stats.status());
  const std::vector<std::pair<const char*, uint64_t>> counters = {
      {"keys", stats->keys},
      {"tombstones", stats->tombstones},
      {"segments", stats->segments},
      {"log_bytes", stats->log_bytes},
      {"dead_bytes", stats->dead_bytes},
      {"index_bytes", stats->index_bytes},
      {"puts", stats->puts},
      {"deletes", stats->deletes},
      {"gets", stats->gets},
      {"fsyncs", stats->fsyncs},
      {"compactions", stats->compactions},
      {"expired_swept", stats->expired_swept},
      {"connections", stats->connections},
      {"requests", stats->requests},
      {"uptime_ms", stats->uptime_ms},
      {"shard_count", stats->shard_count},
  };
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json object = nlohmann::json::object();
    object["node"] = client.connected_node();
    for (const auto& [name, number] : counters) object[name] = number;
    object["last_sequences"] = stats->last_sequences;
    PrintJson(object);
    return kExitOk;
  }
  std::printf("node: %s\n", client.connected_node().c_str());
  for (const auto& [name, number] : counters) {
    std::printf("%s: %llu\n", name, static_cast<unsigned long long>(number));
  }
  return kExitOk;
}

// One HTTP/1.1 request over a plain socket (membership is served over HTTP,
// not the binary protocol); the answer's status and body.
struct HttpResult {
  int status = 0;
  std::string body;
};

// max_bytes bounds the answer's body.
absl::StatusOr<HttpResult> HttpCall(absl::string_view method, absl::string_view path,
                                    absl::string_view body, size_t max_bytes = 1u << 20) {
  std::string target = absl::GetFlag(FLAGS_http_target);
  if (target.empty()) {
    const char* from_env = std::getenv("LOGKV_HTTP_TARGET");
    target = from_env != nullptr ? from_env : "127.0.0.1:8080";
  }
  const size_t colon = target.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(target.substr(colon + 1), &port) ||
      port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--http_target '", target, "' is not host:port"));
  }
  server::http::FetchRequest request;
  // HTTPS with the same flags as the binary protocol's TLS.
  const TlsFlags tls = ReadTlsFlags();
  request.tls = tls.on;
  request.tls_ca_file = tls.ca_file;
  request.tls_cert_file = tls.cert_file;
  request.tls_key_file = tls.key_file;
  request.tls_server_name = tls.server_name;
  request.method = std::string(method);
  request.target = std::string(path);
  request.body = std::string(body);
  request.timeout = absl::GetFlag(FLAGS_timeout);
  request.max_bytes = max_bytes;
  if (!body.empty()) request.headers.emplace_back("Content-Type", "application/json");
  // Credentials for the routes that need them: the cluster secret (membership
  // changes, node-wide figures) and the API key of --token.
  std::string secret = absl::GetFlag(FLAGS_cluster_secret);
  if (secret.empty()) {
    const char* from_env = std::getenv("LOGKV_CLUSTER_SECRET");
    if (from_env != nullptr) secret = from_env;
  }
  if (!secret.empty()) request.headers.emplace_back("X-Cluster-Secret", secret);
  const std::string token = Token();
  if (!token.empty()) request.headers.emplace_back("X-API-Key", token);
  absl::StatusOr<server::http::FetchedResponse> answer =
      server::http::HttpFetch(colon == 0 ? "127.0.0.1" : target.substr(0, colon), port, request);
  if (!answer.ok()) return answer.status();
  HttpResult result;
  result.status = answer->status;
  result.body = std::move(answer->body);
  return result;
}

// The error message of a non-2xx JSON answer ({"error": ...}), else the body.
std::string HttpError(const HttpResult& result) {
  nlohmann::json body = nlohmann::json::parse(result.body, nullptr, false);
  if (body.is_object() && body.contains("error") && body["error"].is_string()) {
    return absl::StrCat("HTTP ", result.status, ": ", body["error"].get<std::string>());
  }
  return absl::StrCat("HTTP ", result.status, ": ", result.body);
}

int Nodes() {
  absl::StatusOr<HttpResult> result = HttpCall("GET", "/nodes", "");
  if (!result.ok()) return Fail(result.status().ToString());
  if (result->status != 200) return Fail(HttpError(*result));
  nlohmann::json nodes = nlohmann::json::parse(result->body, nullptr, false);
  if (!nodes.is_array()) return Fail(absl::StrCat("GET /nodes answered ", result->body));
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson({{"nodes", nodes}});
    return kExitOk;
  }
  auto text = [](const nlohmann::json& node, const char* field) -> std::string {
    if (!node.contains(field)) return "-";
    const nlohmann::json& value = node[field];
    if (value.is_string()) return value.get<std::string>().empty() ? "-" : value.get<std::string>();
    if (value.is_boolean()) return value.get<bool>() ? "alive" : "down";
    if (value.is_null()) return "-";
    return value.dump();
  };
  // STATE is the failure detector's (alive, suspect, dead, left); MEMBER the
  // committed configuration's (joining, active, leaving, removed); ROLE the
  // node's part in the control plane's Raft group, "*" marking its leader.
  std::printf("%-20s %-22s %-22s %-8s %-8s %-8s %s\n", "ID", "ADDRESS", "HTTP", "STATE",
              "MEMBER", "ROLE", "LAST SEEN");
  for (const nlohmann::json& node : nodes) {
    const std::string state = node.contains("state") ? text(node, "state") : text(node, "alive");
    std::string role = text(node, "role");
    if (node.value("leader", false)) role += "*";
    std::printf("%-20s %-22s %-22s %-8s %-8s %-8s %s\n", text(node, "id").c_str(),
                text(node, "address").c_str(), text(node, "http_address").c_str(), state.c_str(),
                text(node, "member_state").c_str(), role.c_str(), text(node, "last_seen").c_str());
    if (node.contains("raft_term")) {
      std::printf("%-20s term %s, commit index %s, epoch %s\n", "", text(node, "raft_term").c_str(),
                  text(node, "commit_index").c_str(), text(node, "applied_epoch").c_str());
    }
  }
  return kExitOk;
}

int Leave() {
  absl::StatusOr<HttpResult> result = HttpCall("POST", "/members/leave", "{}");
  if (!result.ok()) return Fail(result.status().ToString());
  if (result->status != 200) return Fail(HttpError(*result));
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json body = nlohmann::json::parse(result->body, nullptr, false);
    PrintJson(body.is_discarded() ? nlohmann::json{{"left", true}} : body);
  } else {
    std::printf("left the cluster\n");
  }
  return kExitOk;
}

int Join(const std::vector<std::string>& positionals) {
  if (positionals.size() != 2) {
    return Fail("join takes one argument: a member's host:port or the URL of its HTTP API");
  }
  // A JSON string (the body is sent as JSON); /join takes it quoted or not.
  absl::StatusOr<HttpResult> result =
      HttpCall("POST", "/join", nlohmann::json(positionals[1]).dump());
  if (!result.ok()) return Fail(result.status().ToString());
  if (result->status != 200) return Fail(HttpError(*result));
  nlohmann::json body = nlohmann::json::parse(result->body, nullptr, false);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(body.is_discarded() ? nlohmann::json{{"joined", true}} : body);
    return kExitOk;
  }
  const size_t members =
      body.is_object() && body.contains("members") && body["members"].is_array()
          ? body["members"].size()
          : 0;
  std::printf("joined through %s (%zu members known)\n", positionals[1].c_str(), members);
  return kExitOk;
}

int RemoveMember(const std::vector<std::string>& positionals) {
  if (positionals.size() != 2) {
    return Fail("remove-member takes one argument, the member's node id");
  }
  const nlohmann::json request = {{"node_id", positionals[1]}};
  absl::StatusOr<HttpResult> result = HttpCall("POST", "/members/remove", request.dump());
  if (!result.ok()) return Fail(result.status().ToString());
  if (result->status != 200) return Fail(HttpError(*result));
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json body = nlohmann::json::parse(result->body, nullptr, false);
    PrintJson(body.is_discarded() ? nlohmann::json{{"removed", true}} : body);
  } else {
    std::printf("removed %s from the cluster\n", positionals[1].c_str());
  }
  return kExitOk;
}

// The backups: create and status ask the node over HTTP (the
// administrator's: --cluster_secret or the admin's --token); list, verify
// and restore work on the files here, without a node.
std::string Size(uint64_t bytes) {
  if (bytes >= (1ull << 30)) return absl::StrFormat("%.1f GiB", bytes / double(1ull << 30));
  if (bytes >= (1ull << 20)) return absl::StrFormat("%.1f MiB", bytes / double(1ull << 20));
  if (bytes >= (1ull << 10)) return absl::StrFormat("%.1f KiB", bytes / double(1ull << 10));
  return absl::StrCat(bytes, " B");
}

std::string UtcTime(int64_t unix_ms) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixMillis(unix_ms),
                          absl::UTCTimeZone());
}

absl::StatusOr<nlohmann::json> BackupStatusJson() {
  absl::StatusOr<HttpResult> result = HttpCall("GET", "/api/backup/status", "");
  if (!result.ok()) return result.status();
  if (result->status != 200) return absl::UnavailableError(HttpError(*result));
  nlohmann::json body = nlohmann::json::parse(result->body, nullptr, false);
  if (!body.is_object()) {
    return absl::UnavailableError(absl::StrCat("GET /api/backup/status answered ", result->body));
  }
  return body;
}

int BackupCreate() {
  absl::StatusOr<HttpResult> result = HttpCall("POST", "/api/backup", "");
  if (!result.ok()) return Fail(result.status().ToString());
  if (result->status != 202) return Fail(HttpError(*result));
  nlohmann::json started = nlohmann::json::parse(result->body, nullptr, false);
  const std::string name =
      started.is_object() && started.contains("name") && started["name"].is_string()
          ? started["name"].get<std::string>()
          : "";
  if (!absl::GetFlag(FLAGS_wait)) {
    if (absl::GetFlag(FLAGS_json)) {
      PrintJson(started);
    } else {
      std::printf("started %s\n", name.c_str());
    }
    return kExitOk;
  }
  // Until the status shows it finished: as the last success, or as a failure.
  const uint64_t failures_before = [] {
    absl::StatusOr<nlohmann::json> status = BackupStatusJson();
    return status.ok() ? status->value("failures", uint64_t{0}) : uint64_t{0};
  }();
  while (true) {
    absl::SleepFor(absl::Milliseconds(200));
    absl::StatusOr<nlohmann::json> status = BackupStatusJson();
    if (!status.ok()) return Fail(status.status().message());
    const nlohmann::json& last = (*status)["last_success"];
    if (last.is_object() && last.value("name", "") == name) {
      if (absl::GetFlag(FLAGS_json)) {
        PrintJson(last);
      } else {
        std::printf("%s: %s (%s stored, %llu files) in %lld ms\n",
                    last.value("path", "").c_str(), Size(last.value("bytes", uint64_t{0})).c_str(),
                    Size(last.value("stored_bytes", uint64_t{0})).c_str(),
                    static_cast<unsigned long long>(last.value("files", uint64_t{0})),
                    static_cast<long long>(last.value("duration_ms", int64_t{0})));
      }
      return kExitOk;
    }
    if (!status->value("running", false) && status->value("failures", uint64_t{0}) > failures_before) {
      const nlohmann::json& failure = (*status)["last_failure"];
      return Fail(absl::StrCat("backup ", name, " failed: ",
                               failure.is_object() ? failure.value("error", "") : ""));
    }
  }
}

int PrintAuditResult(const server::audit::VerifyResult& result, absl::string_view public_key) {
  const std::string key = server::audit::Hex(public_key);
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json out = {{"ok", result.ok},
                          {"entries", result.entries},
                          {"first_seq", result.first_seq},
                          {"last_seq", result.last_seq},
                          {"head_hash", server::audit::Hex(result.last_hash)},
                          {"public_key", key}};
    if (!result.ok) {
      out["bad_seq"] = result.bad_seq.value_or(0);
      out["problem"] = result.problem;
    }
    PrintJson(out);
  } else if (result.ok) {
    std::printf("OK: %llu entries (%llu to %llu), head %s, key %s\n",
                static_cast<unsigned long long>(result.entries),
                static_cast<unsigned long long>(result.first_seq),
                static_cast<unsigned long long>(result.last_seq),
                server::audit::Hex(result.last_hash).c_str(), key.c_str());
  }
  if (!result.ok) {
    return Fail(absl::StrCat("audit log: entry ", result.bad_seq.value_or(0), " is bad: ",
                             result.problem));
  }
  return kExitOk;
}

int AuditVerify() {
  std::string public_key;
  if (const std::string hex = absl::GetFlag(FLAGS_public_key); !hex.empty()) {
    absl::StatusOr<std::string> raw = server::audit::Unhex(hex, server::audit::kPublicKeyBytes);
    if (!raw.ok()) return Fail("--public-key must be 64 hex digits");
    public_key = *std::move(raw);
  }
  if (const std::string dir = absl::GetFlag(FLAGS_data_dir); !dir.empty()) {
    const std::string audit_dir = absl::StrCat(dir, "/control/audit");
    absl::StatusOr<server::audit::VerifyResult> result =
        server::audit::VerifyDirectory(audit_dir, public_key);
    if (!result.ok()) return Fail(result.status().message());
    if (public_key.empty()) {
      std::ifstream in(absl::StrCat(audit_dir, "/", server::audit::kHeadFileName));
      std::stringstream text;
      text << in.rdbuf();
      absl::StatusOr<server::audit::HeadFile> head = server::audit::HeadFileFromJson(text.str());
      if (head.ok()) public_key = head->public_key;
    }
    return PrintAuditResult(*result, public_key);
  }
  // Over HTTP: every page, then one check of the whole.
  std::vector<std::string> lines;
  std::optional<server::audit::ChainPoint> anchor;
  std::optional<server::audit::ChainPoint> head;
  std::string named_key;
  uint64_t since = 0;
  // Pages of 1,000 entries, the server's default: an entry names at most
  // 256 bytes of a key, so a page stays some megabytes at most (16 MiB taken).
  for (bool first = true;; first = false) {
    absl::StatusOr<HttpResult> result =
        HttpCall("GET", absl::StrCat("/api/audit?since=", since, "&limit=1000"), "", 16u << 20);
    if (!result.ok()) return Fail(result.status().ToString());
    if (result->status != 200) return Fail(HttpError(*result));
    nlohmann::json page = nlohmann::json::parse(result->body, nullptr, false);
    if (!page.is_object() || !page.contains("entries") || !page["entries"].is_array()) {
      return Fail("GET /api/audit answered something else than an audit page");
    }
    if (first) {
      absl::StatusOr<server::audit::HeadFile> points =
          server::audit::HeadFileFromJson(result->body);
      if (!points.ok()) return Fail(absl::StrCat("GET /api/audit: ", points.status().message()));
      anchor = points->anchor;
      head = points->head;
      named_key = points->public_key;
    }
    for (const nlohmann::json& entry : page["entries"]) {
      lines.push_back(entry.dump());
      since = entry.value("seq", since);
    }
    if (!page.value("more", false) || page["entries"].empty()) break;
  }
  if (public_key.empty()) public_key = named_key;
  return PrintAuditResult(server::audit::VerifyLines(lines, anchor, head, public_key), public_key);
}

int BackupStatus() {
  absl::StatusOr<nlohmann::json> status = BackupStatusJson();
  if (!status.ok()) return Fail(status.status().message());
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(*status);
    return kExitOk;
  }
  std::printf("%s\n", status->dump(2).c_str());
  return kExitOk;
}

int BackupList(const std::string& dir) {
  absl::StatusOr<std::vector<server::backup::ListedBackup>> backups =
      server::backup::ListBackups(dir);
  if (!backups.ok()) return Fail(backups.status().message());
  const bool json = absl::GetFlag(FLAGS_json);
  if (!json) {
    std::printf("%-36s %-9s %-24s %10s %10s %s\n", "NAME", "FORMAT", "CREATED", "SIZE", "STORED",
                "STATE");
  }
  for (const server::backup::ListedBackup& backup : *backups) {
    const char* format = server::backup::BackupFormatName(backup.format);
    if (json) {
      nlohmann::json line = {{"name", backup.name},
                             {"path", backup.path},
                             {"format", format},
                             {"complete", backup.complete},
                             {"stored_bytes", backup.stored_bytes}};
      if (backup.complete) {
        line["created_at"] = UtcTime(backup.manifest.created_unix_ms);
        line["bytes"] = backup.manifest.bytes;
        line["files"] = backup.manifest.files.size();
        line["node_id"] = backup.manifest.node_id;
      } else {
        line["error"] = backup.error;
      }
      PrintJson(line);
      continue;
    }
    std::printf("%-36s %-9s %-24s %10s %10s %s\n", backup.name.c_str(), format,
                backup.complete ? UtcTime(backup.manifest.created_unix_ms).c_str() : "-",
                backup.complete ? Size(backup.manifest.bytes).c_str() : "-",
                Size(backup.stored_bytes).c_str(),
                backup.complete ? "complete" : backup.error.c_str());
  }
  return kExitOk;
}

int BackupVerify(const std::string& path) {
  absl::StatusOr<server::backup::BackupManifest> manifest = server::backup::VerifyBackup(path);
  if (!manifest.ok()) {
    if (absl::GetFlag(FLAGS_json)) {
      PrintJson({{"path", path}, {"ok", false}, {"error", manifest.status().message()}});
    }
    return Fail(manifest.status().message());
  }
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson({{"path", path},
               {"ok", true},
               {"name", manifest->name},
               {"files", manifest->files.size()},
               {"bytes", manifest->bytes}});
  } else {
    std::printf("%s: OK, %zu files, %s, every checksum matches\n", path.c_str(),
                manifest->files.size(), Size(manifest->bytes).c_str());
  }
  return kExitOk;
}

int BackupRestore(const std::string& path, const std::string& data_dir) {
  absl::StatusOr<server::backup::BackupManifest> manifest =
      server::backup::RestoreBackup(path, data_dir);
  if (!manifest.ok()) return Fail(manifest.status().message());
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson({{"restored", path},
               {"data_dir", data_dir},
               {"name", manifest->name},
               {"node_id", manifest->node_id},
               {"created_at", UtcTime(manifest->created_unix_ms)},
               {"files", manifest->files.size()},
               {"bytes", manifest->bytes}});
  } else {
    std::printf("restored %s (node %s, taken %s) into %s; start logkvd --data_dir=%s\n",
                manifest->name.c_str(), manifest->node_id.c_str(),
                UtcTime(manifest->created_unix_ms).c_str(), data_dir.c_str(), data_dir.c_str());
  }
  return kExitOk;
}

int Backup(const Arguments& arguments) {
  const std::vector<std::string>& args = arguments.positionals;
  const std::string sub = args.size() > 1 ? args[1] : "";
  const size_t wanted = sub == "create" || sub == "status" ? 2
                        : sub == "list" || sub == "verify" ? 3
                        : sub == "restore"                 ? 4
                                                           : 0;
  if (wanted == 0) {
    return Fail("backup needs create, status, list DIR, verify PATH or restore PATH DATA_DIR");
  }
  if (args.size() != wanted) {
    return Fail(absl::StrCat("backup ", sub, " takes ", wanted - 2, " argument(s): logkv backup ",
                             sub,
                             sub == "list"      ? " DIR"
                             : sub == "verify"  ? " PATH"
                             : sub == "restore" ? " PATH DATA_DIR"
                                                : ""));
  }
  if (sub == "create") return BackupCreate();
  if (sub == "status") return BackupStatus();
  if (sub == "list") return BackupList(args[2]);
  if (sub == "verify") return BackupVerify(args[2]);
  return BackupRestore(args[2], args[3]);
}

// ---- Users, groups and ACLs (HTTP: /api/users, /api/groups, /api/acl) ----

// Calls the route and prints its JSON answer; an error answer fails.
int CallAndPrint(absl::string_view method, const std::string& path, const nlohmann::json& body) {
  absl::StatusOr<HttpResult> result =
      HttpCall(method, path, body.is_null() ? std::string() : body.dump());
  if (!result.ok()) return Fail(result.status().ToString());
  if (result->status < 200 || result->status >= 300) {
    const std::string message = HttpError(*result);
    std::fprintf(stderr, "logkv: %s\n", message.c_str());
    return result->status == 404 ? kExitNotFound : kExitError;
  }
  nlohmann::json answer = nlohmann::json::parse(result->body, nullptr, false);
  if (answer.is_discarded()) {
    PrintRaw(result->body);
    std::fputc('\n', stdout);
  } else if (absl::GetFlag(FLAGS_json)) {
    PrintJson(answer);
  } else {
    std::fputs(answer.dump(2).c_str(), stdout);
    std::fputc('\n', stdout);
  }
  return kExitOk;
}

// A positive id argument, or nullopt after the error is printed.
std::optional<uint64_t> IdArgument(const std::string& text, const char* what) {
  uint64_t id = 0;
  if (!absl::SimpleAtoi(text, &id) || id == 0) {
    Fail(absl::StrCat(what, " is a positive integer, not \"", text, "\""));
    return std::nullopt;
  }
  return id;
}

std::string QueryEscape(absl::string_view text) {
  std::string out;
  for (unsigned char c : text) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == '/') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&out, "%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  return out;
}

int Users(const Arguments& arguments) {
  const std::vector<std::string>& args = arguments.positionals;
  const std::string sub = args.size() > 1 ? args[1] : "";
  auto need = [&](size_t n, const char* usage) {
    if (args.size() == n) return true;
    Fail(absl::StrCat("usage: logkv user ", usage));
    return false;
  };
  if (sub == "list") return need(2, "list") ? CallAndPrint("GET", "/api/users", nullptr) : kExitError;
  if (sub == "show" || sub == "deactivate" || sub == "update") {
    if (!need(3, absl::StrCat(sub, " ID").c_str())) return kExitError;
    std::optional<uint64_t> id = IdArgument(args[2], "a user id");
    if (!id) return kExitError;
    const std::string path = absl::StrCat("/api/users/", *id);
    if (sub == "show") return CallAndPrint("GET", path, nullptr);
    if (sub == "deactivate") return CallAndPrint("DELETE", path, nullptr);
    nlohmann::json body = nlohmann::json::object();
    if (arguments.given.contains("admin")) body["is_admin"] = absl::GetFlag(FLAGS_admin);
    if (arguments.given.contains("reset_keys")) body["reset_keys"] = absl::GetFlag(FLAGS_reset_keys);
    if (arguments.given.contains("active")) {
      const std::string active = absl::GetFlag(FLAGS_active);
      if (active != "true" && active != "false") return Fail("--active is true or false");
      body["is_active"] = active == "true";
    }
    if (body.empty()) return Fail("user update needs --active, --admin or --reset-keys");
    return CallAndPrint("PUT", path, body);
  }
  if (sub == "create") {
    if (!need(5, "create EMAIL USERNAME PASSWORD")) return kExitError;
    return CallAndPrint("POST", "/api/users",
                        {{"email", args[2]},
                         {"username", args[3]},
                         {"password", args[4]},
                         {"is_admin", absl::GetFlag(FLAGS_admin)}});
  }
  return Fail("user needs list, show ID, create EMAIL USERNAME PASSWORD, update ID or "
              "deactivate ID");
}

int Groups(const Arguments& arguments) {
  const std::vector<std::string>& args = arguments.positionals;
  const std::string sub = args.size() > 1 ? args[1] : "";
  auto need = [&](size_t n, const char* usage) {
    if (args.size() == n) return true;
    Fail(absl::StrCat("usage: logkv group ", usage));
    return false;
  };
  if (sub == "list") return need(2, "list") ? CallAndPrint("GET", "/api/groups", nullptr) : kExitError;
  if (sub == "create") {
    if (!need(3, "create NAME")) return kExitError;
    nlohmann::json members = nlohmann::json::array();
    for (const std::string& member : absl::GetFlag(FLAGS_members)) {
      std::optional<uint64_t> id = IdArgument(member, "each of --members");
      if (!id) return kExitError;
      members.push_back(*id);
    }
    return CallAndPrint("POST", "/api/groups", {{"name", args[2]}, {"members", members}});
  }
  if (sub == "show" || sub == "delete" || sub == "rename" || sub == "add" || sub == "remove") {
    const bool two = sub == "rename" || sub == "add" || sub == "remove";
    if (!need(two ? 4 : 3, two ? absl::StrCat(sub, " ID ", sub == "rename" ? "NAME" : "USER").c_str()
                               : absl::StrCat(sub, " ID").c_str())) {
      return kExitError;
    }
    std::optional<uint64_t> id = IdArgument(args[2], "a group id");
    if (!id) return kExitError;
    const std::string path = absl::StrCat("/api/groups/", *id);
    if (sub == "show") return CallAndPrint("GET", path, nullptr);
    if (sub == "delete") return CallAndPrint("DELETE", path, nullptr);
    if (sub == "rename") return CallAndPrint("PUT", path, {{"name", args[3]}});
    std::optional<uint64_t> user = IdArgument(args[3], "a user id");
    if (!user) return kExitError;
    if (sub == "add") return CallAndPrint("POST", path + "/members", {{"user_id", *user}});
    return CallAndPrint("DELETE", absl::StrCat(path, "/members/", *user), nullptr);
  }
  return Fail("group needs list, show ID, create NAME, rename ID NAME, delete ID, add ID USER "
              "or remove ID USER");
}

int Acl(const Arguments& arguments) {
  const std::vector<std::string>& args = arguments.positionals;
  const std::string sub = args.size() > 1 ? args[1] : "";
  std::string query;
  if (const uint64_t ns = absl::GetFlag(FLAGS_namespace_user); ns != 0) {
    query = absl::StrCat("namespace=", ns);
  }
  auto target = [&query](absl::string_view route, absl::string_view prefix) {
    std::string path = absl::StrCat(route, "?prefix=", QueryEscape(prefix));
    if (!query.empty()) absl::StrAppend(&path, "&", query);
    return path;
  };
  if (sub == "list" && args.size() == 2) {
    return CallAndPrint("GET", query.empty() ? "/api/acl" : absl::StrCat("/api/acl?", query),
                        nullptr);
  }
  if ((sub == "get" || sub == "rm" || sub == "check") && args.size() == 3) {
    if (sub == "get") return CallAndPrint("GET", target("/api/acl", args[2]), nullptr);
    if (sub == "check") return CallAndPrint("GET", target("/api/acl/check", args[2]), nullptr);
    return CallAndPrint("DELETE", target("/api/acl", args[2]), nullptr);
  }
  if (sub == "set" && args.size() == 4) {
    // Without --audit (or --noaudit) the entry takes the flag deciding for its prefix.
    nlohmann::json body = {{"mode", args[3]}};
    if (arguments.given.contains("audit")) body["audit"] = absl::GetFlag(FLAGS_audit);
    if (const uint64_t owner = absl::GetFlag(FLAGS_owner); owner != 0) body["owner"] = owner;
    if (const std::string group = absl::GetFlag(FLAGS_group); !group.empty()) {
      uint64_t id = 0;
      if (absl::SimpleAtoi(group, &id)) {
        body["group"] = id;
      } else {
        body["group"] = group;
      }
    }
    return CallAndPrint("PUT", target("/api/acl", args[2]), body);
  }
  return Fail("usage: logkv acl get PREFIX | set PREFIX MODE | rm PREFIX | list | check PREFIX");
}

int Ping() {
  absl::StatusOr<std::unique_ptr<Client>> connected = ConnectFromFlags();
  if (!connected.ok()) return Fail(connected.status().ToString());
  Client& client = **connected;
  if (absl::Status status = client.Ping(); !status.ok()) return FailStatus(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson({{"ok", true}, {"node", client.connected_node()}});
  } else {
    std::printf("PONG\n");
  }
  return kExitOk;
}

int Main(int argc, char** argv) {
  Arguments arguments;
  if (absl::Status parsed = ParseArguments(argc, argv, &arguments); !parsed.ok()) {
    std::fprintf(stderr, "logkv: %s\n\n%s", std::string(parsed.message()).c_str(),
                 Usage().c_str());
    return kExitError;
  }
  if (arguments.version) {
    std::printf("logkv %s (%s build)\n", BuildVersion(), BuildType());
    return 0;
  }
  // logkv help [CMD], logkv CMD --help, logkv --help [CMD].
  const bool help_command = !arguments.positionals.empty() && arguments.positionals[0] == "help";
  if (arguments.help || help_command) {
    // With --help the command is the topic (logkv help --help: help's own help).
    const size_t topic = arguments.help ? 0 : 1;
    if (arguments.positionals.size() <= topic) {
      std::fputs(Usage().c_str(), stdout);
      return kExitOk;
    }
    if (arguments.positionals.size() > topic + 1) {
      return Fail(absl::StrCat("help takes one command, not \"",
                               arguments.positionals[topic + 1], "\" too"));
    }
    const CommandHelp* command = FindCommand(arguments.positionals[topic]);
    if (command == nullptr) {
      std::fprintf(stderr, "logkv: no command \"%s\"\n\n%s",
                   arguments.positionals[topic].c_str(), Usage().c_str());
      return kExitError;
    }
    std::fputs(CommandUsage(*command).c_str(), stdout);
    return kExitOk;
  }
  if (arguments.positionals.empty()) {
    std::fputs(Usage().c_str(), stderr);
    return kExitError;
  }
  const std::string command = arguments.positionals[0];
  if (FindCommand(command) == nullptr) {
    std::fprintf(stderr, "logkv: unknown command \"%s\"\n\n%s", command.c_str(),
                 Usage().c_str());
    return kExitError;
  }
  // Each command checks its arguments before it connects, so a usage error
  // is reported as such whatever the state of the nodes.
  if (command == "put") return Put(arguments);
  if (command == "get") return Get(arguments);
  if (command == "del" || command == "delete") return Delete(arguments);
  if (command == "scan") return Scan(arguments);
  if (command == "watch") return Watch(arguments);
  if (command == "backup") return Backup(arguments);
  if (command == "remove-member") return RemoveMember(arguments.positionals);
  if (command == "join") return Join(arguments.positionals);
  if (command == "user") return Users(arguments);
  if (command == "group") return Groups(arguments);
  if (command == "acl") return Acl(arguments);
  if (command == "audit") {
    const std::vector<std::string>& args = arguments.positionals;
    if (args.size() != 2 || args[1] != "verify") return Fail("usage: logkv audit verify");
    return AuditVerify();
  }
  if (arguments.positionals.size() > 1) {
    return Fail(
        absl::StrCat("unexpected argument \"", arguments.positionals[1], "\" for ", command));
  }
  if (command == "stats") return Stats();
  if (command == "nodes") return Nodes();
  if (command == "leave") return Leave();
  return Ping();
}

}  // namespace
}  // namespace logkv::cli

int main(int argc, char** argv) { return logkv::cli::Main(argc, argv); }
