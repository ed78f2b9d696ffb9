// JSON text from clients: request bodies and the stored values seed 003's
// routes read back. nlohmann's parser and destructor are iterative, but
// serialising, copying and comparing a tree recurse once per level, so a
// body nested 100,000 deep would overflow a loop thread's stack the moment
// it is echoed back. Every JSON body the server parses goes through here,
// where the nesting depth is bounded while parsing, before a tree exists.
//
// Depth counts containers: a scalar is 0 deep, `{}` and `[1]` are 1 deep,
// `{"a":[1]}` is 2 deep. The limit is --max-json-depth.
//
// Thread-safety: pure functions.
#ifndef LOGKV_SERVER_HTTP_JSON_BODY_H_
#define LOGKV_SERVER_HTTP_JSON_BODY_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace logkv::server::http {

inline constexpr size_t kDefaultMaxJsonDepth = 64;
// The highest --max-json-depth. Trees are parsed, copied and serialised
// recursively: 10,000 levels took between 1 and 2 MiB of stack in an
// optimised build, and overflowed the 8 MiB of a thread under
// AddressSanitizer (whose frames are several times larger). 1,000 levels
// leave a wide margin in every build (json_body_test's
// TheCeilingSerialisesSafely runs it, also under the sanitizers).
inline constexpr size_t kMaxJsonDepthCeiling = 1'000;
static_assert(kDefaultMaxJsonDepth <= kMaxJsonDepthCeiling);

// The most values (scalars and containers, at any depth) a JSON text may
// hold to be built into a tree. A tree takes up to about 80 bytes a value
// (an empty object is a map of its own), more than 25 times the text of
// `{},`: without a bound, a body of 22 MB held about 600 MB while it was
// parsed. One million values bound a tree to about 80 MiB, and a loop
// builds one at a time. Text that is only checked builds nothing and has
// no such bound.
inline constexpr size_t kMaxJsonTreeValues = 1'000'000;

// OK when text is exactly one JSON value nested at most max_depth deep and
// holding at most max_values values; otherwise InvalidArgument saying why
// (naming the limit when it is one). Builds no tree and stops at the first
// container too deep or value too many.
absl::Status CheckJson(absl::string_view text, size_t max_depth,
                       size_t max_values = SIZE_MAX);

// The tree of text when it is one JSON value nested at most max_depth deep
// and holding at most kMaxJsonTreeValues values; otherwise InvalidArgument,
// as CheckJson. CheckJson runs first, so a body of a million '[' costs 65
// levels of work, not a million-node tree (a parser callback would discard
// the levels but still track each one).
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, size_t max_depth);

// Whether bytes are well-formed UTF-8 (no overlong forms, surrogates or code
// points beyond U+10FFFF): what a JSON string carries unchanged.
bool IsValidUtf8(absl::string_view bytes);

}  // namespace logkv::server::http

#endif  // LOGKV_SERVER_HTTP_JSON_BODY_H_
