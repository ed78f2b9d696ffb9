// The Service's verdicts that the network layers ask for (AdmitWrite,
// AdmitWatch), that Handle answers writes with the same verdict, and a
// watch's events as the Service reads them for the net layer, against a real
// engine in a temporary directory.
#include "server/service.h"

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "protocol/frame.h"
#include "server/namespaces.h"
#include "tests/engine/test_macros.h"
#include "tests/engine/test_util.h"

namespace logkv::server {
namespace {

namespace p = ::logkv::protocol;

class ServiceTest : public ::testing::Test {
 protected:
  void Open(bool read_only) {
    auto engine = engine::Engine::Open(test::TestOptions(dir_.Subdir("db"), &clock_));
    ASSERT_OK(engine);
    engine_ = *std::move(engine);
    ServiceConfig config;
    config.node_id = "node";
    config.read_only = read_only;
    service_ = std::make_unique<Service>(engine_.get(), config, &counters_);
  }
  void TearDown() override {
    service_.reset();
    if (engine_ != nullptr) {
      EXPECT_OK(engine_->Close());
    }
  }

  // The status Handle answers request_frame with (never deferred here).
  absl::Status Run(const std::string& request_frame, const RequestContext& context = {}) {
    const auto* request = flatbuffers::GetSizePrefixedRoot<p::Request>(
        reinterpret_cast<const uint8_t*>(request_frame.data()));
    flatbuffers::FlatBufferBuilder builder(256);
    const Service::Outcome outcome =
        service_->Handle(context, *request, &builder, []() -> Service::Completion {
          ADD_FAILURE() << "deferred";
          return [](std::string) {};
        });
    EXPECT_EQ(outcome, Service::Outcome::kAnswered);
    absl::StatusOr<const p::Response*> response = p::VerifyResponse(p::FrameOf(builder), 1u << 30);
    if (!response.ok()) return response.status();
    return p::StatusFromResponse(**response);
  }
  static std::string PutFrame(const std::string& key) {
    flatbuffers::FlatBufferBuilder b;
    auto k = b.CreateVector(reinterpret_cast<const uint8_t*>(key.data()), key.size());
    auto v = b.CreateVector(reinterpret_cast<const uint8_t*>("v"), 1);
    auto put = p::CreatePut(b, k, v);
    b.FinishSizePrefixed(p::CreateRequest(b, 1, p::Operation::Put, put.Union()));
    return std::string(p::FrameOf(b));
  }
  static std::string BatchFrame(const std::string& key) {
    flatbuffers::FlatBufferBuilder b;
    auto k = b.CreateVector(reinterpret_cast<const uint8_t*>(key.data()), key.size());
    std::vector<flatbuffers::Offset<p::BatchItem>> items = {p::CreateBatchItem(b, false, k)};
    auto batch = p::CreateBatch(b, b.CreateVector(items));
    b.FinishSizePrefixed(p::CreateRequest(b, 1, p::Operation::Batch, batch.Union()));
    return std::string(p::FrameOf(b));
  }

  test::ScopedTempDir dir_;
  test::ManualClock clock_;
  ServerCounters counters_;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<Service> service_;
};

// The same bits on every key, for every user.
class FixedPolicy : public AccessPolicy {
 public:
  explicit FixedPolicy(uint32_t bits) : bits_(bits) {}
  uint32_t Allowed(uint64_t, absl::string_view) const override { return bits_; }
  bool Uniform(uint64_t, absl::string_view, uint32_t* bits) const override {
    *bits = bits_;
    return true;
  }

 private:
  const uint32_t bits_;
};

// With create but not write (or the reverse), whether the key exists
// decides; another writer may create or delete it between the check and the
// write (where the audit hook runs, which the test uses to be that writer):
// the write then fails instead of doing what the ACL does not allow. A
// write-only caller's write is held to the key existing, not to the version
// it saw, so writes racing each other all go through.
TEST_F(ServiceTest, ACreateOnlyOrWriteOnlyPutHoldsToWhatItsCheckFound) {
  Open(/*read_only=*/false);
  std::function<void()> meanwhile;
  service_->SetWriteAudit(Service::WriteAudit{
      .audited = [](absl::string_view) { return true; },
      .record = [&](absl::string_view, bool) {
        if (meanwhile) std::exchange(meanwhile, nullptr)();
      }});
  const FixedPolicy create_only(kAccessCreate), write_only(kAccessWrite);
  RequestContext context;
  context.user_id = 7;
  const auto batch_status = [&](const std::string& key) {
    const std::string frame = BatchFrame(key);
    flatbuffers::FlatBufferBuilder builder(256);
    service_->Handle(context,
                     *flatbuffers::GetSizePrefixedRoot<p::Request>(
                         reinterpret_cast<const uint8_t*>(frame.data())),
                     &builder, []() -> Service::Completion { return [](std::string) {}; });
    const auto* response = flatbuffers::GetSizePrefixedRoot<p::Response>(builder.GetBufferPointer());
    const p::BatchResult* result = response->result_as_BatchResult();
    return result != nullptr && result->items()->size() == 1 ? result->items()->Get(0)->status()
                                                            : p::StatusCode::Internal;
  };

  context.access = &create_only;
  meanwhile = [&] { ASSERT_OK(engine_->Put("raced", "theirs").status()); };
  EXPECT_EQ(Run(PutFrame("raced"), context).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(test::GetOrStatus(engine_.get(), "raced"), "theirs");
  meanwhile = [&] { ASSERT_OK(engine_->Put("raced-batch", "theirs").status()); };
  EXPECT_EQ(batch_status("raced-batch"), p::StatusCode::FailedPrecondition);
  EXPECT_EQ(test::GetOrStatus(engine_.get(), "raced-batch"), "theirs");
  EXPECT_OK(Run(PutFrame("fresh"), context));  // nobody raced it
  EXPECT_EQ(Run(PutFrame("fresh"), context).code(), absl::StatusCode::kPermissionDenied);

  context.access = &write_only;
  ASSERT_OK(engine_->Put("gone", "v1").status());
  meanwhile = [&] { ASSERT_OK(engine_->Delete("gone").status()); };
  EXPECT_EQ(Run(PutFrame("gone"), context).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(test::GetOrStatus(engine_.get(), "gone"), "NOT_FOUND");
  ASSERT_OK(engine_->Put("shared", "v1").status());
  meanwhile = [&] { ASSERT_OK(engine_->Put("shared", "another writer's").status()); };
  EXPECT_OK(Run(PutFrame("shared"), context));
  EXPECT_EQ(test::GetOrStatus(engine_.get(), "shared"), "v");
  EXPECT_EQ(Run(PutFrame("never-made"), context).code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(ServiceTest, AReadOnlyNodeRefusesWritesWithOneVerdict) {
  Open(/*read_only=*/true);
  const absl::Status refused = service_->AdmitWrite();
  EXPECT_EQ(refused, absl::PermissionDeniedError("this node is read-only"));
  // Handle answers the protocol's writes with the very same status.
  EXPECT_EQ(Run(PutFrame("k")), refused);
  EXPECT_EQ(Run(BatchFrame("k")), refused);
  // Before the key's own scope: the node refuses whoever asks.
  RequestContext no_write;
  no_write.may_write = false;
  EXPECT_EQ(Run(PutFrame("k"), no_write), refused);
}

TEST_F(ServiceTest, AWritableNodeAdmitsWritesAndTheScopeDecides) {
  Open(/*read_only=*/false);
  EXPECT_OK(service_->AdmitWrite());
  EXPECT_OK(Run(PutFrame("k")));
  RequestContext no_write;
  no_write.may_write = false;
  EXPECT_EQ(Run(PutFrame("k"), no_write),
            absl::PermissionDeniedError("this API key may not write (missing scope)"));
}

TEST_F(ServiceTest, WatchingNeedsTheReadScope) {
  Open(/*read_only=*/true);  // watching reads: a read-only node admits it
  EXPECT_OK(service_->AdmitWatch(RequestContext()));
  RequestContext tenant;
  tenant.key_prefix = std::string("\0t", 2);
  tenant.may_write = false;
  EXPECT_OK(service_->AdmitWatch(tenant));
  RequestContext no_read;
  no_read.may_read = false;
  EXPECT_EQ(service_->AdmitWatch(no_read),
            absl::PermissionDeniedError("this API key may not read (missing scope)"));
}

// A watch's events as its caller sees them: its namespace only, keys without
// it, the reserved keys never, and the cursor past everything read.
TEST_F(ServiceTest, AWatchSeesItsOwnNamespaceFromItsCursor) {
  Open(/*read_only=*/false);
  const std::string tenant_prefix = TenantPrefix(7);
  ASSERT_OK(engine_->Put("global", "g").status());
  ASSERT_OK(engine_->Put(tenant_prefix + "room/a", "1").status());
  ASSERT_OK(engine_->Put(TenantPrefix(8) + "room/b", "other tenant").status());
  ASSERT_OK(engine_->Put(std::string(kAuthPrefix) + "user", "secret").status());
  ASSERT_OK(engine_->Put(tenant_prefix + "hall/c", "not under the prefix").status());

  flatbuffers::FlatBufferBuilder request;
  const std::vector<uint64_t> from_start(engine_->ShardCount(), 0);
  request.Finish(p::CreateWatch(request, request.CreateVector(
                                             reinterpret_cast<const uint8_t*>("room/"), 5),
                                request.CreateVector(from_start)));
  const auto* watch = flatbuffers::GetRoot<p::Watch>(request.GetBufferPointer());

  RequestContext tenant;
  tenant.key_prefix = tenant_prefix;
  absl::StatusOr<Service::WatchCursor> cursor = service_->OpenWatch(tenant, *watch);
  ASSERT_OK(cursor);
  EXPECT_EQ(cursor->prefix, tenant_prefix + "room/");
  std::vector<std::string> keys;
  for (uint32_t shard = 0; shard < engine_->ShardCount(); ++shard) {
    flatbuffers::FlatBufferBuilder builder;
    bool more = false;
    auto events = service_->ReadWatchEvents(tenant, shard, 100, &*cursor, &builder, &more);
    ASSERT_OK(events);
    EXPECT_FALSE(more);
    EXPECT_EQ(cursor->after[shard], engine_->LastSequence(shard));
    if (events->empty()) continue;
    builder.Finish(builder.CreateVector(*events));
    const auto* list = flatbuffers::GetRoot<flatbuffers::Vector<flatbuffers::Offset<p::Event>>>(
        builder.GetBufferPointer());
    for (const p::Event* event : *list) keys.emplace_back(p::View(event->key()));
  }
  EXPECT_EQ(keys, std::vector<std::string>{"room/a"});

  // The global namespace sees its own keys, never the reserved namespace
  // (tenants' keys and accounts both begin with the reserved byte).
  flatbuffers::FlatBufferBuilder everything;
  everything.Finish(p::CreateWatch(everything, 0, everything.CreateVector(from_start)));
  cursor = service_->OpenWatch(RequestContext(), *flatbuffers::GetRoot<p::Watch>(
                                                      everything.GetBufferPointer()));
  ASSERT_OK(cursor);
  size_t seen = 0;
  for (uint32_t shard = 0; shard < engine_->ShardCount(); ++shard) {
    flatbuffers::FlatBufferBuilder builder;
    bool more = false;
    auto events =
        service_->ReadWatchEvents(RequestContext(), shard, 100, &*cursor, &builder, &more);
    ASSERT_OK(events);
    seen += events->size();
  }
  EXPECT_EQ(seen, 1u);  // "global"

  // A resume point must name every shard.
  flatbuffers::FlatBufferBuilder short_resume;
  short_resume.Finish(p::CreateWatch(short_resume, 0,
                                     short_resume.CreateVector(std::vector<uint64_t>{0})));
  if (engine_->ShardCount() != 1) {
    EXPECT_EQ(service_->OpenWatch(RequestContext(), *flatbuffers::GetRoot<p::Watch>(
                                                        short_resume.GetBufferPointer()))
                  .status()
                  .code(),
              absl::StatusCode::kInvalidArgument);
  }
  RequestContext no_read;
  no_read.may_read = false;
  EXPECT_EQ(service_->OpenWatch(no_read, *watch).status().code(),
            absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace logkv::server
