// GoogleTest helpers for absl::Status: each evaluates its expression once and
// prints the status when it is not OK.
#ifndef LOGKV_TESTS_ENGINE_TEST_MACROS_H_
#define LOGKV_TESTS_ENGINE_TEST_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"

namespace logkv::test {

inline const absl::Status& StatusOf(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

template <typename S>
::testing::AssertionResult IsOk(const char* expression, const S& status_like) {
  const absl::Status& status = StatusOf(status_like);
  if (status.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << expression << " is " << status;
}

template <typename S>
::testing::AssertionResult HasCode(const char* expression, const char* /*code_expression*/,
                                   const S& status_like, absl::StatusCode code) {
  const absl::Status& status = StatusOf(status_like);
  if (status.code() == code) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << expression << " is " << status << ", expected code " << absl::StatusCodeToString(code);
}

}  // namespace logkv::test

#define EXPECT_OK(expression) EXPECT_PRED_FORMAT1(::logkv::test::IsOk, expression)
#define ASSERT_OK(expression) ASSERT_PRED_FORMAT1(::logkv::test::IsOk, expression)
#define EXPECT_STATUS_CODE(expression, code) \
  EXPECT_PRED_FORMAT2(::logkv::test::HasCode, expression, code)
#define ASSERT_STATUS_CODE(expression, code) \
  ASSERT_PRED_FORMAT2(::logkv::test::HasCode, expression, code)

#define LOGKV_TEST_CONCAT_INNER(a, b) a##b
#define LOGKV_TEST_CONCAT(a, b) LOGKV_TEST_CONCAT_INNER(a, b)

// Declares or assigns lhs from a StatusOr, failing the test (and returning
// from the void function) if it is not OK.
#define ASSERT_OK_AND_ASSIGN(lhs, expression) \
  ASSERT_OK_AND_ASSIGN_IMPL(LOGKV_TEST_CONCAT(status_or_, __LINE__), lhs, expression)
#define ASSERT_OK_AND_ASSIGN_IMPL(status_or, lhs, expression)                 \
  auto status_or = (expression);                                              \
  ASSERT_TRUE(status_or.ok()) << #expression << " is " << status_or.status(); \
  lhs = std::move(status_or).value()

#endif  // LOGKV_TESTS_ENGINE_TEST_MACROS_H_
