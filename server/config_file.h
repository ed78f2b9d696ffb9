// logkvd's configuration file (--config=FILE): TOML whose top-level keys are
// logkvd's flag names as written on the command line, with dashes
// (data-dir = "/var/lib/logkv"; underscores are accepted too). Each value has
// the flag's type: a string, an integer or a boolean; a comma-separated list
// flag (--http, --seeds) also takes an array of strings. The file is checked
// whole before anything is applied: an unknown key, a value of the wrong type
// or out of the flag's range, a key given twice and a syntax error are each
// reported as "FILE:LINE: key: what is wrong".
//
// What this file does not know is which flags exist: the caller passes a
// look-up (logkvd's flag registry), so the checks are tested without logkvd.
#ifndef LOGKV_SERVER_CONFIG_FILE_H_
#define LOGKV_SERVER_CONFIG_FILE_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace logkv::server {

// The type of a flag's value, as far as the file's checks go.
enum class SettingType {
  kString,
  kList,  // a string of comma-separated items: a string or an array of strings
  kBool,
  kInt32,
  kInt64,
  kUint32,
  kUint64,
  kDouble,  // a number: a TOML float or integer
};

// One setting of a file: the flag's name with underscores (data_dir) and
// its value as it would follow --name= on the command line.
struct ConfigSetting {
  std::string name;
  std::string value;
  int line = 0;
};

// The type of the flag named (underscores), or nullopt when a file may not
// set it (no such flag, or one such as --config itself).
using SettingLookup = std::function<std::optional<SettingType>(absl::string_view name)>;

// Checks the text of a config file; path names it in errors. Settings come
// back in the file's order. InvalidArgument lists every problem found, one
// "PATH:LINE: ..." line each.
absl::StatusOr<std::vector<ConfigSetting>> ParseConfig(absl::string_view text,
                                                       const std::string& path,
                                                       const SettingLookup& lookup);

// Reads the file and checks it as ParseConfig does; NotFound or another
// error naming the file when it cannot be read.
absl::StatusOr<std::vector<ConfigSetting>> ReadConfigFile(const std::string& path,
                                                          const SettingLookup& lookup);

// value as a TOML value of that type, for printing a config file: a string
// quoted and escaped, a number or boolean as it is.
std::string TomlValue(SettingType type, absl::string_view value);

}  // namespace logkv::server

#endif  // LOGKV_SERVER_CONFIG_FILE_H_
