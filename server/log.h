// Leveled logging to stderr, one line per message with a UTC timestamp.
// Thread-safe (each line is one write).
//
// Two formats (SetLogFormat): text, "2026-01-02T03:04:05.678Z INFO logkvd:
// message key=value ...", and JSON, one object per line,
// {"ts":"2026-01-02T03:04:05.678Z","level":"info","logger":"logkvd",
// "msg":"message","key":value,...}, for log shippers (journald, Loki,
// Elasticsearch) that parse lines instead of guessing at their layout.
#ifndef LOGKV_SERVER_LOG_H_
#define LOGKV_SERVER_LOG_H_

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <variant>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace logkv::server {

enum class Level { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };
enum class LogFormat { kText = 0, kJson = 1 };

void SetLogLevel(Level level);
bool ParseLogLevel(absl::string_view text, Level* level);
bool LogEnabled(Level level);
void SetLogFormat(LogFormat format);
bool ParseLogFormat(absl::string_view text, LogFormat* format);
void LogLine(Level level, absl::string_view message);

// A named value carried by a line next to its message: in the text format
// " name=value" (strings quoted when they hold a space, a quote or '='), in
// JSON a member of the object. String values must be printable text
// (PrintableBytes makes them so); numbers stay numbers in JSON.
struct LogField {
  absl::string_view name;
  std::variant<std::string, int64_t, double> value;
};
void LogLine(Level level, absl::string_view message, std::initializer_list<LogField> fields);

// bytes made printable for a log line: C-escaped (\n, \x01, \\), and cut
// after max_bytes of input with "..." appended, so a binary or huge key
// neither breaks the line nor floods the log.
std::string PrintableBytes(absl::string_view bytes, size_t max_bytes = 64);

// Lets a message that can repeat at every request (a full disk fails every
// write) through at most once per interval, counting what it held back.
//
// Thread-safety: Allow may be called from any thread at once.
class LogLimiter {
 public:
  explicit LogLimiter(absl::Duration interval) : interval_ns_(absl::ToInt64Nanoseconds(interval)) {}
  LogLimiter(const LogLimiter&) = delete;
  LogLimiter& operator=(const LogLimiter&) = delete;

  // Whether to log now; when so, *held_back is how many were not logged
  // since the last line.
  bool Allow(int64_t* held_back);

 private:
  const int64_t interval_ns_;
  std::atomic<int64_t> next_ns_{0};
  std::atomic<int64_t> held_back_{0};
};

template <typename... Args>
void Log(Level level, const absl::FormatSpec<Args...>& format, const Args&... args) {
  if (LogEnabled(level)) LogLine(level, absl::StrFormat(format, args...));
}

}  // namespace logkv::server

#endif  // LOGKV_SERVER_LOG_H_
