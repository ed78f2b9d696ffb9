#include "server/backup/cron.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace logkv::server::backup {

namespace {

struct Field {
  const char* name;
  int min;
  int max;
};
constexpr Field kFields[] = {
    {"minute", 0, 59}, {"hour", 0, 23}, {"day of month", 1, 31}, {"month", 1, 12},
    {"day of week", 0, 7},
};

bool ParseNumber(absl::string_view text, int* out) {
  if (text.empty() || text.size() > 2) return false;
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return absl::SimpleAtoi(text, out);
}

// Sets bits[v] for every value the field's text selects.
absl::Status ParseField(absl::string_view text, const Field& field, std::vector<bool>* bits) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("cron ", field.name, " field '", text, "': ", why));
  };
  bits->assign(field.max + 1, false);
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    if (item.empty()) return bad("empty list item");
    int step = 1;
    if (const size_t slash = item.find('/'); slash != absl::string_view::npos) {
      if (!ParseNumber(item.substr(slash + 1), &step) || step == 0) {
        return bad("the step after '/' must be a positive number");
      }
      item = item.substr(0, slash);
    }
    int low;
    int high;
    if (item == "*") {
      low = field.min;
      high = field.max;
    } else if (const size_t dash = item.find('-'); dash != absl::string_view::npos) {
      if (!ParseNumber(item.substr(0, dash), &low) || !ParseNumber(item.substr(dash + 1), &high)) {
        return bad("a range is two numbers, A-B");
      }
      if (low > high) return bad("a range must not run backwards");
    } else {
      if (!ParseNumber(item, &low)) return bad("not a number, range, list, step or *");
      high = low;
      // "5/15" is cron for 5-max/15.
      if (step != 1) high = field.max;
    }
    if (low < field.min || high > field.max) {
      return bad(absl::StrCat("values must be in [", field.min, ", ", field.max, "]"));
    }
    for (int value = low; value <= high; value += step) (*bits)[value] = true;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CronSchedule> CronSchedule::Parse(absl::string_view text) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(absl::StripAsciiWhitespace(text), absl::ByAnyChar(" \t"), absl::SkipEmpty());
  if (parts.size() != 5) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cron schedule '", text,
        "' must have five fields: minute hour day-of-month month day-of-week"));
  }
  CronSchedule schedule;
  schedule.text_ = std::string(absl::StripAsciiWhitespace(text));
  std::vector<bool> bits;
  for (int i = 0; i < 5; ++i) {
    if (absl::Status status = ParseField(parts[i], kFields[i], &bits); !status.ok()) return status;
    for (int value = kFields[i].min; value <= kFields[i].max; ++value) {
      if (!bits[value]) continue;
      switch (i) {
        case 0: schedule.minutes_.set(value); break;
        case 1: schedule.hours_.set(value); break;
        case 2: schedule.days_.set(value); break;
        case 3: schedule.months_.set(value); break;
        case 4: schedule.weekdays_.set(value % 7); break;
      }
    }
  }
  // A field restricted is one that does not start with '*' (crontab(5)).
  schedule.days_restricted_ = parts[2].front() != '*';
  schedule.weekdays_restricted_ = parts[4].front() != '*';
  return schedule;
}

absl::Time CronSchedule::Next(absl::Time after) const {
  const absl::TimeZone utc = absl::UTCTimeZone();
  absl::CivilMinute t = absl::ToCivilMinute(after, utc) + 1;
  const absl::CivilMinute limit = t + 5 * 366 * 24 * 60;
  while (t < limit) {
    if (!months_.test(t.month())) {
      t = absl::CivilMinute(absl::CivilMonth(t) + 1);
      continue;
    }
    const bool day_matches = days_.test(t.day());
    // absl numbers Monday 0 .. Sunday 6; cron Sunday 0 .. Saturday 6.
    const int weekday = (static_cast<int>(absl::GetWeekday(absl::CivilDay(t))) + 1) % 7;
    const bool weekday_matches = weekdays_.test(weekday);
    const bool day_ok = days_restricted_ && weekdays_restricted_
                            ? (day_matches || weekday_matches)
                            : (day_matches && weekday_matches);
    if (!day_ok) {
      t = absl::CivilMinute(absl::CivilDay(t) + 1);
      continue;
    }
    if (!hours_.test(t.hour())) {
      t = absl::CivilMinute(absl::CivilHour(t) + 1);
      continue;
    }
    if (!minutes_.test(t.minute())) {
      t += 1;
      continue;
    }
    return absl::FromCivil(t, utc);
  }
  return absl::InfiniteFuture();
}

}  // namespace logkv::server::backup
