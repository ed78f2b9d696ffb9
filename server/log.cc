#include "server/log.h"

#include <unistd.h>

#include <atomic>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace logkv::server {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::atomic<int> g_format{static_cast<int>(LogFormat::kText)};

constexpr const char* kTextNames[] = {"DEBUG", "INFO", "WARN", "ERROR"};
constexpr const char* kJsonNames[] = {"debug", "info", "warning", "error"};

// One write per line keeps lines from different threads whole.
void WriteLine(const std::string& line) {
  (void)!::write(STDERR_FILENO, line.data(), line.size());
}

std::string Now() {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
}

void AppendTextField(const LogField& field, std::string* line) {
  absl::StrAppend(line, " ", field.name, "=");
  if (const auto* text = std::get_if<std::string>(&field.value)) {
    const bool quote = text->empty() || text->find_first_of(" \"=") != std::string::npos;
    if (quote) {
      // Values are printable already (PrintableBytes escapes quotes too):
      // only a quote the caller left would end the value early.
      absl::StrAppend(line, "\"", absl::StrReplaceAll(*text, {{"\"", "\\\""}}), "\"");
    } else {
      line->append(*text);
    }
  } else if (const auto* integer = std::get_if<int64_t>(&field.value)) {
    absl::StrAppend(line, *integer);
  } else {
    absl::StrAppend(line, std::get<double>(field.value));
  }
}

}  // namespace

void SetLogLevel(Level level) { g_level.store(static_cast<int>(level)); }

bool ParseLogLevel(absl::string_view text, Level* level) {
  if (text == "debug") {
    *level = Level::kDebug;
  } else if (text == "info") {
    *level = Level::kInfo;
  } else if (text == "warning" || text == "warn") {
    *level = Level::kWarning;
  } else if (text == "error") {
    *level = Level::kError;
  } else {
    return false;
  }
  return true;
}

bool LogEnabled(Level level) { return static_cast<int>(level) >= g_level.load(); }

void SetLogFormat(LogFormat format) { g_format.store(static_cast<int>(format)); }

bool ParseLogFormat(absl::string_view text, LogFormat* format) {
  if (text == "text") {
    *format = LogFormat::kText;
  } else if (text == "json") {
    *format = LogFormat::kJson;
  } else {
    return false;
  }
  return true;
}

void LogLine(Level level, absl::string_view message) { LogLine(level, message, {}); }

void LogLine(Level level, absl::string_view message, std::initializer_list<LogField> fields) {
  const int index = static_cast<int>(level);
  if (g_format.load(std::memory_order_relaxed) == static_cast<int>(LogFormat::kJson)) {
    nlohmann::ordered_json object = {{"ts", Now()},
                             {"level", kJsonNames[index]},
                             {"logger", "logkvd"},
                             {"msg", std::string(message)}};
    for (const LogField& field : fields) {
      nlohmann::ordered_json& member = object[std::string(field.name)];
      std::visit([&member](const auto& value) { member = value; }, field.value);
    }
    // Messages may quote bytes from the outside (paths, names): replace
    // what is not UTF-8 rather than throw, so the line is still JSON.
    std::string line = object.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
    line.push_back('\n');
    WriteLine(line);
    return;
  }
  std::string line = absl::StrCat(Now(), " ", kTextNames[index], " logkvd: ", message);
  for (const LogField& field : fields) AppendTextField(field, &line);
  line.push_back('\n');
  WriteLine(line);
}

std::string PrintableBytes(absl::string_view bytes, size_t max_bytes) {
  if (bytes.size() <= max_bytes) return absl::CHexEscape(bytes);
  return absl::StrCat(absl::CHexEscape(bytes.substr(0, max_bytes)), "...");
}

bool LogLimiter::Allow(int64_t* held_back) {
  const int64_t now = absl::GetCurrentTimeNanos();
  int64_t next = next_ns_.load(std::memory_order_relaxed);
  if (now < next || !next_ns_.compare_exchange_strong(next, now + interval_ns_,
                                                      std::memory_order_relaxed)) {
    held_back_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  *held_back = held_back_.exchange(0, std::memory_order_relaxed);
  return true;
}

}  // namespace logkv::server
