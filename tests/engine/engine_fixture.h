// The fixture most engine tests share: a temporary directory, a manual clock,
// a log capture, test options (TestOptions) and the engine under test, closed
// cleanly at the end of each test.
#ifndef LOGKV_TESTS_ENGINE_ENGINE_FIXTURE_H_
#define LOGKV_TESTS_ENGINE_ENGINE_FIXTURE_H_

#include <memory>

#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/test_util.h"

namespace logkv::test {

template <typename Base = ::testing::Test>
class EngineFixture : public Base {
 protected:
  void SetUp() override {
    options_ = TestOptions(dir_.Subdir("db"), &clock_, &log_);
  }

  void TearDown() override {
    if (engine_ != nullptr) {
      EXPECT_OK(engine_->Close());
    }
  }

  absl::Status Open() {
    absl::StatusOr<std::unique_ptr<engine::Engine>> engine = engine::Engine::Open(options_);
    if (!engine.ok()) return engine.status();
    engine_ = std::move(engine).value();
    return absl::OkStatus();
  }

  // Closes cleanly (writing hint files) and opens again with options_.
  absl::Status Reopen() {
    if (absl::Status status = engine_->Close(); !status.ok()) return status;
    engine_.reset();
    return Open();
  }

  ScopedTempDir dir_;
  ManualClock clock_;
  LogCapture log_;
  engine::Options options_;
  std::unique_ptr<engine::Engine> engine_;  // declared last: destroyed before what it uses
};

}  // namespace logkv::test

#endif  // LOGKV_TESTS_ENGINE_ENGINE_FIXTURE_H_
