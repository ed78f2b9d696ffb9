#include "server/config_file.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "toml++/toml.h"

namespace logkv::server {
namespace {

const char* TomlTypeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a floating-point number";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

const char* ExpectedName(SettingType type) {
  switch (type) {
    case SettingType::kString:
      return "a string";
    case SettingType::kList:
      return "a string or an array of strings";
    case SettingType::kBool:
      return "a boolean (true or false, unquoted)";
    case SettingType::kInt32:
    case SettingType::kInt64:
    case SettingType::kUint32:
    case SettingType::kUint64:
      return "an integer (unquoted)";
    case SettingType::kDouble:
      return "a number (unquoted)";
  }
  return "a value";
}

// The range of an integer setting (TOML integers are 64-bit signed, so the
// top of a uint64 flag's range cannot be written in a file at all).
void IntegerRange(SettingType type, int64_t* low, int64_t* high) {
  *low = std::numeric_limits<int64_t>::min();
  *high = std::numeric_limits<int64_t>::max();
  if (type == SettingType::kInt32) {
    *low = std::numeric_limits<int32_t>::min();
    *high = std::numeric_limits<int32_t>::max();
  } else if (type == SettingType::kUint32) {
    *low = 0;
    *high = std::numeric_limits<uint32_t>::max();
  } else if (type == SettingType::kUint64) {
    *low = 0;
  }
}

// The command-line form of node's value for a setting of that type, or an
// error message.
absl::StatusOr<std::string> ValueText(const toml::node& node, SettingType type) {
  auto wrong_type = [&]() {
    return absl::InvalidArgumentError(
        absl::StrCat("expected ", ExpectedName(type), ", not ", TomlTypeName(node.type())));
  };
  switch (type) {
    case SettingType::kString:
      if (!node.is_string()) return wrong_type();
      return std::string(node.as_string()->get());
    case SettingType::kList: {
      if (node.is_string()) return std::string(node.as_string()->get());
      if (!node.is_array()) return wrong_type();
      std::vector<std::string> items;
      for (const toml::node& item : *node.as_array()) {
        if (!item.is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "expected an array of strings, but an item is ", TomlTypeName(item.type())));
        }
        std::string text(item.as_string()->get());
        if (text.find(',') != std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat("an item of the array holds a comma: \"", text, "\""));
        }
        items.push_back(std::move(text));
      }
      return absl::StrJoin(items, ",");
    }
    case SettingType::kBool:
      if (!node.is_boolean()) return wrong_type();
      return std::string(node.as_boolean()->get() ? "true" : "false");
    case SettingType::kInt32:
    case SettingType::kInt64:
    case SettingType::kUint32:
    case SettingType::kUint64: {
      if (!node.is_integer()) return wrong_type();
      const int64_t value = node.as_integer()->get();
      int64_t low = 0;
      int64_t high = 0;
      IntegerRange(type, &low, &high);
      if (value < low || value > high) {
        return absl::InvalidArgumentError(
            absl::StrCat(value, " is out of range (", low, " to ", high, ")"));
      }
      return absl::StrCat(value);
    }
    case SettingType::kDouble: {
      double value;
      if (node.is_floating_point()) {
        value = node.as_floating_point()->get();
      } else if (node.is_integer()) {
        value = static_cast<double>(node.as_integer()->get());
      } else {
        return wrong_type();
      }
      if (!std::isfinite(value)) {
        return absl::InvalidArgumentError(absl::StrCat(value, " is not a finite number"));
      }
      // Round-trips: the flag parses back the same double.
      return absl::StrFormat("%.17g", value);
    }
  }
  return wrong_type();
}

}  // namespace

absl::StatusOr<std::vector<ConfigSetting>> ParseConfig(absl::string_view text,
                                                       const std::string& path,
                                                       const SettingLookup& lookup) {
  toml::table table;
  try {
    table = toml::parse(std::string_view(text.data(), text.size()), path);
  } catch (const toml::parse_error& error) {
    return absl::InvalidArgumentError(absl::StrCat(path, ":", error.source().begin.line, ":",
                                                   error.source().begin.column, ": ",
                                                   std::string(error.description())));
  }
  std::vector<std::pair<int, std::string>> problems;  // line, message
  std::vector<ConfigSetting> settings;
  absl::flat_hash_map<std::string, int> lines;  // name -> line it was set on
  for (const auto& [key, node] : table) {
    const int line = static_cast<int>(key.source().begin.line);
    const std::string spelled(key.str());
    auto problem = [&](absl::string_view what) {
      problems.emplace_back(line, absl::StrCat(path, ":", line, ": ", spelled, ": ", what));
    };
    std::string name = spelled;
    for (char& c : name) {
      if (c == '-') c = '_';
    }
    std::optional<SettingType> type = lookup(name);
    if (node.is_table()) {
      problem(
          "tables are not settings: write each setting at the top level, as name = value, with "
          "the names of logkvd's flags");
      continue;
    }
    if (!type.has_value()) {
      problem("unknown setting (the keys are logkvd's flag names, as listed by logkvd --help)");
      continue;
    }
    if (auto [it, inserted] = lines.emplace(name, line); !inserted) {
      problem(absl::StrCat("set twice (also on line ", it->second, ")"));
      continue;
    }
    absl::StatusOr<std::string> value = ValueText(node, *type);
    if (!value.ok()) {
      problem(value.status().message());
      continue;
    }
    settings.push_back(ConfigSetting{std::move(name), *std::move(value), line});
  }
  if (!problems.empty()) {
    // The table iterates in key order; a reader wants the file's order.
    std::stable_sort(problems.begin(), problems.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<std::string> lines;
    for (auto& [line, message] : problems) lines.push_back(std::move(message));
    return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
  }
  std::sort(settings.begin(), settings.end(),
            [](const ConfigSetting& a, const ConfigSetting& b) { return a.line < b.line; });
  return settings;
}

absl::StatusOr<std::vector<ConfigSetting>> ReadConfigFile(const std::string& path,
                                                          const SettingLookup& lookup) {
  std::error_code ignored;
  if (std::filesystem::is_directory(path, ignored)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": cannot read the config file: it is a directory"));
  }
  errno = 0;
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    const int error = errno;
    const std::string message = absl::StrCat(path, ": cannot read the config file: ",
                                             error != 0 ? std::strerror(error) : "open failed");
    return error == ENOENT ? absl::NotFoundError(message) : absl::FailedPreconditionError(message);
  }
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": cannot read the config file"));
  }
  return ParseConfig(text.str(), path, lookup);
}

std::string TomlValue(SettingType type, absl::string_view value) {
  if (type != SettingType::kString && type != SettingType::kList) return std::string(value);
  std::ostringstream out;
  out << toml::value<std::string>(std::string(value));
  return out.str();
}

}  // namespace logkv::server
