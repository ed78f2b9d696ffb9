// Leveled logging to stderr, one line per message with a UTC timestamp.
// Thread-safe (each line is one write).
#ifndef LOGKV_SERVER_LOG_H_
#define LOGKV_SERVER_LOG_H_

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace logkv::server {

enum class Level { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(Level level);
bool ParseLogLevel(absl::string_view text, Level* level);
bool LogEnabled(Level level);
void LogLine(Level level, absl::string_view message);

template <typename... Args>
void Log(Level level, const absl::FormatSpec<Args...>& format, const Args&... args) {
  if (LogEnabled(level)) LogLine(level, absl::StrFormat(format, args...));
}

}  // namespace logkv::server

#endif  // LOGKV_SERVER_LOG_H_
