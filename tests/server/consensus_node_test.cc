// Tests of SharedReadSyncs (server/consensus_node.h): reads of consensus keys
// share KvSync proposals, and a read never takes the answer of one proposed
// before it arrived.

#include "server/consensus_node.h"

#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace logkv::server {
namespace {

using Done = SharedReadSyncs::Done;

// The revisions (or 0 for an error) a read was answered with.
Done Record(std::vector<uint64_t>* into) {
  return [into](absl::StatusOr<uint64_t> revision) {
    into->push_back(revision.ok() ? *revision : 0);
  };
}

TEST(SharedReadSyncsTest, AReadArrivingDuringAKvSyncWaitsForTheNextOne) {
  auto syncs = std::make_shared<SharedReadSyncs>();
  std::vector<Done> proposed;  // the KvSyncs in flight, answered by the test
  auto propose = [&proposed](Done answer) { proposed.push_back(std::move(answer)); };
  std::vector<uint64_t> a, b, c;

  syncs->Await(propose, Record(&a));
  ASSERT_EQ(proposed.size(), 1u);
  // Arrive while the first is in flight: they must not take its answer.
  syncs->Await(propose, Record(&b));
  syncs->Await(propose, Record(&c));
  EXPECT_EQ(proposed.size(), 1u) << "a proposal per read: nothing shared";

  Done first = std::move(proposed[0]);
  first(uint64_t{7});
  EXPECT_EQ(a, std::vector<uint64_t>{7});
  EXPECT_TRUE(b.empty()) << "answered by a KvSync proposed before it arrived";
  EXPECT_TRUE(c.empty());
  // One more, proposed once the first answered, for both.
  ASSERT_EQ(proposed.size(), 2u);
  Done second = std::move(proposed[1]);
  second(uint64_t{9});
  EXPECT_EQ(b, std::vector<uint64_t>{9});
  EXPECT_EQ(c, std::vector<uint64_t>{9});
  EXPECT_EQ(proposed.size(), 2u) << "a proposal with nobody waiting for it";

  // Nothing in flight: the next read proposes at once. A failure reaches
  // its group and the reads waiting for the next one (which would wait as
  // long again), and the read after proposes anew.
  std::vector<uint64_t> d, waiting, e;
  syncs->Await(propose, Record(&d));
  ASSERT_EQ(proposed.size(), 3u);
  syncs->Await(propose, Record(&waiting));
  Done third = std::move(proposed[2]);
  third(absl::UnavailableError("no leader"));
  EXPECT_EQ(d, std::vector<uint64_t>{0});
  EXPECT_EQ(waiting, std::vector<uint64_t>{0});
  EXPECT_EQ(proposed.size(), 3u) << "proposed again after a failure";
  syncs->Await(propose, Record(&e));
  ASSERT_EQ(proposed.size(), 4u);
  Done fourth = std::move(proposed[3]);
  fourth(uint64_t{12});
  EXPECT_EQ(e, std::vector<uint64_t>{12});
}

// A control plane that is stopping answers inline, on the caller's thread:
// no lock is held across the proposal, and every read is answered.
TEST(SharedReadSyncsTest, AnswersGivenInlineAreTaken) {
  auto syncs = std::make_shared<SharedReadSyncs>();
  int proposals = 0;
  auto refuse = [&proposals](Done answer) {
    ++proposals;
    answer(absl::UnavailableError("the control plane is stopping"));
  };
  std::vector<uint64_t> answers;
  for (int i = 0; i < 3; ++i) syncs->Await(refuse, Record(&answers));
  EXPECT_EQ(answers, (std::vector<uint64_t>{0, 0, 0}));
  EXPECT_EQ(proposals, 3);
}

}  // namespace
}  // namespace logkv::server
