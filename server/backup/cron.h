// A five-field cron schedule (minute hour day-of-month month day-of-week),
// as crontab(5) writes it, for --backup-schedule. Debian packages no C or
// C++ cron-expression library, so this is the minimal subset:
//
//   *            every value
//   N            one value
//   A-B          a range
//   */S, A-B/S   every S-th value of the whole range or of A-B
//   X,Y,...      a list of any of these
//
// Ranges: minute 0-59, hour 0-23, day of month 1-31, month 1-12, day of
// week 0-7 (0 and 7 are Sunday). Names (JAN, MON) and the @daily-style
// shorthands are not accepted. As in cron, when both day fields are
// restricted a day matches if either does. Times are UTC.
//
// Thread-safety: a CronSchedule is immutable; any thread may use it.
#ifndef LOGKV_SERVER_BACKUP_CRON_H_
#define LOGKV_SERVER_BACKUP_CRON_H_

#include <bitset>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace logkv::server::backup {

class CronSchedule {
 public:
  // InvalidArgument naming the field that does not parse.
  static absl::StatusOr<CronSchedule> Parse(absl::string_view text);

  // The first minute strictly after `after` that matches (UTC), or
  // absl::InfiniteFuture() if none does within five years (such as
  // "0 0 31 2 *").
  absl::Time Next(absl::Time after) const;

  const std::string& text() const { return text_; }

 private:
  CronSchedule() = default;

  std::string text_;
  std::bitset<60> minutes_;
  std::bitset<24> hours_;
  std::bitset<32> days_;      // 1-31
  std::bitset<13> months_;    // 1-12
  std::bitset<7> weekdays_;   // 0-6, Sunday 0
  bool days_restricted_ = false;
  bool weekdays_restricted_ = false;
};

}  // namespace logkv::server::backup

#endif  // LOGKV_SERVER_BACKUP_CRON_H_
