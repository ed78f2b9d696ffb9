#include "server/log.h"

#include <unistd.h>

#include <atomic>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace logkv::server {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::kInfo)};

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

void LogLine(Level level, absl::string_view message) {
  static constexpr const char* kNames[] = {"DEBUG", "INFO", "WARN", "ERROR"};
  std::string line = absl::StrFormat(
      "%s %s logkvd: %s\n", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()),
      kNames[static_cast<int>(level)], message);
  // One write per line keeps lines from different threads whole.
  (void)!::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace logkv::server
