#include "server/http/json_body.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"

namespace logkv::server::http {

namespace {

using nlohmann::json;

// A SAX consumer that builds nothing: it counts open containers and values,
// and stops the parse at the first container past max_depth or value past
// max_values.
class DepthCheck {
 public:
  DepthCheck(size_t max_depth, size_t max_values)
      : max_depth_(max_depth), max_values_(max_values) {}

  bool null() { return Value(); }
  bool boolean(bool) { return Value(); }
  bool number_integer(json::number_integer_t) { return Value(); }
  bool number_unsigned(json::number_unsigned_t) { return Value(); }
  bool number_float(json::number_float_t, const json::string_t&) { return Value(); }
  bool string(json::string_t&) { return Value(); }
  bool binary(json::binary_t&) { return Value(); }
  bool key(json::string_t&) { return true; }
  bool start_object(size_t) { return Value() && Enter(); }
  bool start_array(size_t) { return Value() && Enter(); }
  bool end_object() { return Leave(); }
  bool end_array() { return Leave(); }
  bool parse_error(size_t position, const std::string&, const json::exception&) {
    // nlohmann's message quotes the last token, which may be most of the
    // body: the position is enough to find the mistake.
    status_ = absl::InvalidArgumentError(
        absl::StrCat("not valid JSON (syntax error near byte ", position, ")"));
    return false;
  }

  const absl::Status& status() const { return status_; }

 private:
  bool Enter() {
    if (depth_ == max_depth_) {
      status_ = absl::InvalidArgumentError(absl::StrCat("JSON nested deeper than the limit of ",
                                                        max_depth_, " levels (--max-json-depth)"));
      return false;
    }
    ++depth_;
    return true;
  }
  bool Leave() {
    --depth_;
    return true;
  }
  bool Value() {
    if (values_ == max_values_) {
      status_ = absl::InvalidArgumentError(
          absl::StrCat("JSON holds more values than the limit of ", max_values_));
      return false;
    }
    ++values_;
    return true;
  }

  const size_t max_depth_;
  const size_t max_values_;
  size_t depth_ = 0;
  size_t values_ = 0;
  absl::Status status_;
};

}  // namespace

absl::Status CheckJson(absl::string_view text, size_t max_depth, size_t max_values) {
  // nlohmann's lexer takes a NUL byte for the end of its input, and would
  // read "{}\0rest" as "{}": JSON text never holds a raw NUL.
  if (const size_t nul = text.find('\0'); nul != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("not valid JSON (a NUL byte at byte ", nul + 1, ")"));
  }
  DepthCheck check(max_depth, max_values);
  if (json::sax_parse(text.begin(), text.end(), &check)) return absl::OkStatus();
  // sax_parse fails only through a callback returning false, and both that
  // return false set a status; this one covers a change of that contract.
  if (check.status().ok()) return absl::InvalidArgumentError("not valid JSON");
  return check.status();
}

absl::StatusOr<json> ParseJson(absl::string_view text, size_t max_depth) {
  if (absl::Status status = CheckJson(text, max_depth, kMaxJsonTreeValues); !status.ok()) {
    return status;
  }
  json value = json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  return value;
}

bool IsValidUtf8(absl::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    const auto byte = static_cast<unsigned char>(bytes[i]);
    size_t length;
    uint32_t code_point;
    if (byte < 0x80) {
      ++i;
      continue;
    } else if ((byte & 0xe0) == 0xc0) {
      length = 2;
      code_point = byte & 0x1f;
    } else if ((byte & 0xf0) == 0xe0) {
      length = 3;
      code_point = byte & 0x0f;
    } else if ((byte & 0xf8) == 0xf0) {
      length = 4;
      code_point = byte & 0x07;
    } else {
      return false;
    }
    if (i + length > bytes.size()) return false;
    for (size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(bytes[i + k]);
      if ((next & 0xc0) != 0x80) return false;
      code_point = (code_point << 6) | (next & 0x3f);
    }
    static constexpr uint32_t kMinForLength[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code_point < kMinForLength[length]) return false;
    if (code_point > 0x10ffff) return false;
    if (code_point >= 0xd800 && code_point <= 0xdfff) return false;
    i += length;
  }
  return true;
}

}  // namespace logkv::server::http
