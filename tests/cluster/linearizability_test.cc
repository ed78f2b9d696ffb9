// Tests of the linearizability checker: hand-written histories whose verdict
// is known (including the classic anomalies: a stale read after a completed
// write, two readers that see two writes in opposite orders), ambiguous
// operations that did or did not take effect, the search budget, and
// randomized histories produced by a sequential simulation with random
// overlaps (linearizable by construction) plus mutations of them that no
// linearization can explain.
//
// Randomized tests read LOGKV_TEST_SEED or pick a seed, and print it.
#include "tests/cluster/linearizability.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace logkv::test::linearizability {
namespace {

Operation Put(int client, std::string value, int64_t invoke_ns, int64_t complete_ns,
              Outcome outcome = Outcome::kOk) {
  Operation operation;
  operation.client = client;
  operation.kind = OperationKind::kPut;
  operation.value = std::move(value);
  operation.invoke_ns = invoke_ns;
  operation.complete_ns = complete_ns;
  operation.outcome = outcome;
  return operation;
}

// A get that read value (nullopt: absent).
Operation Get(int client, std::optional<std::string> value, int64_t invoke_ns, int64_t complete_ns,
              Outcome outcome = Outcome::kOk) {
  Operation operation;
  operation.client = client;
  operation.kind = OperationKind::kGet;
  operation.found = value.has_value();
  operation.value = value.value_or("");
  operation.invoke_ns = invoke_ns;
  operation.complete_ns = complete_ns;
  operation.outcome = outcome;
  return operation;
}

Operation Delete(int client, int64_t invoke_ns, int64_t complete_ns,
                 Outcome outcome = Outcome::kOk) {
  Operation operation;
  operation.client = client;
  operation.kind = OperationKind::kDelete;
  operation.invoke_ns = invoke_ns;
  operation.complete_ns = complete_ns;
  operation.outcome = outcome;
  return operation;
}

constexpr auto kAmbiguous = Outcome::kAmbiguous;
constexpr auto kFailed = Outcome::kFailed;
constexpr int64_t kNever = 0;  // complete_ns of an ambiguous operation: ignored

void ExpectVerdict(const std::vector<Operation>& history, Verdict expected,
                   const CheckOptions& options = {}) {
  const CheckResult result = Check(history, options);
  EXPECT_EQ(result.verdict, expected)
      << "got " << VerdictName(result.verdict) << " after " << result.steps << " steps for\n"
      << FormatHistory(history) << result.explanation;
}

void ExpectLinearizable(const std::vector<Operation>& history) {
  ExpectVerdict(history, Verdict::kLinearizable);
}
void ExpectNotLinearizable(const std::vector<Operation>& history) {
  ExpectVerdict(history, Verdict::kNotLinearizable);
}

// ---- Known histories ------------------------------------------------------

TEST(LinearizabilityTest, EmptyHistoryIsLinearizable) { ExpectLinearizable({}); }

TEST(LinearizabilityTest, SequentialHistory) {
  ExpectLinearizable({Get(0, std::nullopt, 0, 10), Put(0, "a", 20, 30), Get(0, "a", 40, 50),
                      Put(1, "b", 60, 70), Get(0, "b", 80, 90), Delete(1, 100, 110),
                      Get(0, std::nullopt, 120, 130)});
}

TEST(LinearizabilityTest, InitialStateIsAbsentUnlessGiven) {
  ExpectNotLinearizable({Get(0, "a", 0, 10)});
  CheckOptions options;
  options.initially_found = true;
  options.initial_value = "a";
  ExpectVerdict({Get(0, "a", 0, 10)}, Verdict::kLinearizable, options);
  ExpectVerdict({Get(0, std::nullopt, 0, 10)}, Verdict::kNotLinearizable, options);
}

TEST(LinearizabilityTest, ReadOfAValueNeverWrittenIsRejected) {
  ExpectNotLinearizable({Put(0, "a", 0, 10), Get(1, "z", 20, 30)});
}

TEST(LinearizabilityTest, StaleReadAfterACompletedWriteIsRejected) {
  ExpectNotLinearizable({Put(0, "a", 0, 10), Put(0, "b", 20, 30), Get(1, "a", 40, 50)});
  // The same read overlapping the second write may see either value.
  ExpectLinearizable({Put(0, "a", 0, 10), Put(0, "b", 20, 30), Get(1, "a", 25, 50)});
  ExpectLinearizable({Put(0, "a", 0, 10), Put(0, "b", 20, 30), Get(1, "b", 25, 50)});
}

TEST(LinearizabilityTest, ReadAfterACompletedDeleteSeesAbsent) {
  ExpectNotLinearizable({Put(0, "a", 0, 10), Delete(0, 20, 30), Get(1, "a", 40, 50)});
  ExpectLinearizable({Put(0, "a", 0, 10), Delete(0, 20, 30), Get(1, std::nullopt, 40, 50)});
  // A delete of a key that is already absent changes nothing.
  ExpectLinearizable({Delete(0, 0, 10), Get(1, std::nullopt, 20, 30)});
}

TEST(LinearizabilityTest, ReadAbsentAfterACompletedPutIsRejected) {
  ExpectNotLinearizable({Put(0, "a", 0, 10), Get(1, std::nullopt, 20, 30)});
}

TEST(LinearizabilityTest, ReadConcurrentWithAWriteSeesTheOldOrTheNewValue) {
  const Operation first = Put(0, "a", 0, 10);
  const Operation second = Put(0, "b", 20, 50);
  ExpectLinearizable({first, second, Get(1, "a", 30, 40)});
  ExpectLinearizable({first, second, Get(1, "b", 30, 40)});
  ExpectNotLinearizable({first, second, Get(1, std::nullopt, 30, 40)});
}

TEST(LinearizabilityTest, OnceTheNewValueIsSeenTheOldOneCannotComeBack) {
  // Both reads overlap the write, but they are ordered between themselves.
  ExpectNotLinearizable(
      {Put(0, "a", 0, 10), Put(0, "b", 20, 100), Get(1, "b", 30, 40), Get(2, "a", 50, 60)});
  ExpectLinearizable(
      {Put(0, "a", 0, 10), Put(0, "b", 20, 100), Get(1, "a", 30, 40), Get(2, "b", 50, 60)});
}

TEST(LinearizabilityTest, TwoReadersSeeingConcurrentWritesInOppositeOrdersIsRejected) {
  const std::vector<Operation> writes = {Put(0, "a", 0, 100), Put(1, "b", 0, 100)};
  std::vector<Operation> history = writes;
  history.push_back(Get(2, "a", 10, 20));
  history.push_back(Get(2, "b", 30, 40));
  history.push_back(Get(3, "b", 10, 20));
  history.push_back(Get(3, "a", 30, 40));
  ExpectNotLinearizable(history);
  // The same readers agreeing on the order are fine.
  history = writes;
  history.push_back(Get(2, "a", 10, 20));
  history.push_back(Get(2, "b", 30, 40));
  history.push_back(Get(3, "a", 10, 20));
  history.push_back(Get(3, "b", 30, 40));
  ExpectLinearizable(history);
}

TEST(LinearizabilityTest, ConcurrentWritesMayTakeEffectInEitherOrder) {
  const std::vector<Operation> writes = {Put(0, "a", 0, 50), Put(1, "b", 10, 60),
                                         Delete(2, 20, 70)};
  for (const std::optional<std::string>& seen :
       std::vector<std::optional<std::string>>{"a", "b", std::nullopt}) {
    std::vector<Operation> history = writes;
    history.push_back(Get(3, seen, 80, 90));
    ExpectLinearizable(history);
  }
}

TEST(LinearizabilityTest, ManyOverlappingOperations) {
  // Five clients, every operation overlapping every other one: the search
  // has many orders to try and the memoization keeps it small.
  std::vector<Operation> history;
  for (int client = 0; client < 5; ++client) {
    history.push_back(Put(client, absl::StrCat("v", client), client, 1000 + client));
  }
  history.push_back(Get(5, "v3", 2, 999));
  history.push_back(Get(6, "v1", 3, 998));
  history.push_back(Get(7, std::nullopt, 4, 997));
  ExpectLinearizable(history);
  // After all of them complete only one value can remain, and it must be
  // the same for every later reader.
  history.push_back(Get(5, "v2", 2000, 2010));
  history.push_back(Get(6, "v2", 2020, 2030));
  ExpectLinearizable(history);
  history.push_back(Get(7, "v4", 2040, 2050));
  ExpectNotLinearizable(history);
}

TEST(LinearizabilityTest, OperationsThatTouchAreConcurrent) {
  // The read starts at the instant the write completes: either order holds.
  ExpectLinearizable({Put(0, "a", 0, 10), Put(0, "b", 10, 20), Get(1, "a", 20, 30)});
}

// ---- Ambiguous and failed operations --------------------------------------

TEST(LinearizabilityTest, AmbiguousWriteMayHaveTakenEffect) {
  ExpectLinearizable({Put(0, "a", 0, 10), Put(1, "b", 20, kNever, kAmbiguous),
                      Get(2, "b", 100, 110), Get(2, "b", 120, 130)});
}

TEST(LinearizabilityTest, AmbiguousWriteMayNotHaveTakenEffect) {
  ExpectLinearizable({Put(0, "a", 0, 10), Put(1, "b", 20, kNever, kAmbiguous),
                      Get(2, "a", 100, 110), Get(2, "a", 1000, 1010)});
}

TEST(LinearizabilityTest, AmbiguousWriteMayTakeEffectLongAfterItsInvocation) {
  // A coordinator that timed out may still land the write later, e.g. from
  // a hinted-handoff queue.
  ExpectLinearizable({Put(0, "a", 0, 10), Put(1, "b", 20, kNever, kAmbiguous),
                      Get(2, "a", 100, 110), Get(2, "b", 5000, 5010)});
}

TEST(LinearizabilityTest, AmbiguousWriteTakesEffectAtMostOnce) {
  // Once b is seen and then overwritten, it cannot reappear.
  ExpectNotLinearizable({Put(0, "a", 0, 10), Put(1, "b", 20, kNever, kAmbiguous),
                         Get(2, "b", 100, 110), Put(0, "c", 120, 130), Get(2, "b", 140, 150)});
  // Nor can a flip-flop between the old and the new value be explained.
  ExpectNotLinearizable({Put(0, "a", 0, 10), Put(1, "b", 20, kNever, kAmbiguous),
                         Get(2, "b", 100, 110), Get(2, "a", 120, 130)});
}

TEST(LinearizabilityTest, AmbiguousWriteCannotTakeEffectBeforeItsInvocation) {
  ExpectNotLinearizable({Get(0, "b", 0, 10), Put(1, "b", 20, kNever, kAmbiguous)});
}

TEST(LinearizabilityTest, AmbiguousDeleteMayOrMayNotHaveTakenEffect) {
  const std::vector<Operation> writes = {Put(0, "a", 0, 10), Delete(1, 20, kNever, kAmbiguous)};
  std::vector<Operation> history = writes;
  history.push_back(Get(2, std::nullopt, 30, 40));
  ExpectLinearizable(history);
  history = writes;
  history.push_back(Get(2, "a", 30, 40));
  history.push_back(Get(2, std::nullopt, 50, 60));
  ExpectLinearizable(history);
  history = writes;
  history.push_back(Get(2, std::nullopt, 30, 40));
  history.push_back(Get(2, "a", 50, 60));
  ExpectNotLinearizable(history);
}

TEST(LinearizabilityTest, FailedWritesAreDropped) {
  // A definite failure (4xx) applied nothing: its value cannot be read.
  ExpectNotLinearizable({Put(0, "a", 0, 10), Put(1, "b", 20, 30, kFailed), Get(2, "b", 40, 50)});
  ExpectLinearizable({Put(0, "a", 0, 10), Put(1, "b", 20, 30, kFailed), Get(2, "a", 40, 50)});
  ExpectLinearizable({Put(0, "a", 0, 10), Delete(1, 20, 30, kFailed), Get(2, "a", 40, 50)});
}

TEST(LinearizabilityTest, FailedReadsAreDropped) {
  // Whatever an ambiguous or failed read carries is not an observation.
  const CheckResult result = Check({Put(0, "a", 0, 10), Get(1, "zzz", 20, 30, kAmbiguous),
                                    Get(1, "yyy", 40, 50, kFailed), Get(1, "a", 60, 70)});
  EXPECT_EQ(result.verdict, Verdict::kLinearizable);
  EXPECT_EQ(result.operations, 2u);
}

TEST(LinearizabilityTest, AmbiguousWriteOfAValueReadTwiceIsStillOneWrite) {
  // b is written once (ambiguously) and read, then overwritten: the second
  // read of b cannot be explained even though b's write never completed.
  ExpectNotLinearizable({Put(1, "b", 0, kNever, kAmbiguous), Get(2, "b", 10, 20),
                         Put(0, "c", 30, 40), Get(2, "b", 50, 60)});
  // Two ambiguous writes of the same value can each explain one read.
  ExpectLinearizable({Put(1, "b", 0, kNever, kAmbiguous), Put(3, "b", 5, kNever, kAmbiguous),
                      Get(2, "b", 10, 20), Put(0, "c", 30, 40), Get(2, "b", 50, 60)});
}

TEST(LinearizabilityTest, ManyPendingAmbiguousWritesStayCheap) {
  // Timeouts pile up during a partition: dozens of writes pending forever.
  // Unread puts are left out and interchangeable deletes are tried in one
  // order only, so even a rejection (which explores everything) is quick.
  std::vector<Operation> history = {Put(0, "a", 0, 10)};
  for (int i = 0; i < 40; ++i) {
    history.push_back(Delete(1, 100 + 10 * i, kNever, kAmbiguous));
    history.push_back(Put(2, absl::StrCat("lost", i), 105 + 10 * i, kNever, kAmbiguous));
    history.push_back(Get(3, i % 2 == 0 ? std::optional<std::string>("a") : std::nullopt,
                          102 + 10 * i, 108 + 10 * i));
  }
  CheckOptions options;
  options.max_steps = 200'000;
  // Absent once a delete took effect; a again only with a new put of a.
  ExpectVerdict(history, Verdict::kNotLinearizable, options);
  history.push_back(Put(0, "a", 90, kNever, kAmbiguous));
  for (Operation& operation : history) {
    if (operation.kind == OperationKind::kPut && operation.value == "a") {
      operation.outcome = kAmbiguous;
    }
  }
  // Still not: a single put of a and alternating reads need several puts.
  ExpectVerdict(history, Verdict::kNotLinearizable, options);
}

// ---- Budget and explanations ----------------------------------------------

// ---- Versions and compare-and-set ------------------------------------------

// A compare-and-set put of value if the key is at expected (0: absent),
// answered as done (matched) or as a mismatch.
Operation Cas(int client, std::string value, uint64_t expected, bool matched, int64_t invoke_ns,
              int64_t complete_ns, Outcome outcome = Outcome::kOk) {
  Operation operation = Put(client, std::move(value), invoke_ns, complete_ns, outcome);
  operation.kind = OperationKind::kCompareAndSet;
  operation.expected_version = expected;
  operation.cas_matched = matched;
  return operation;
}

Operation CasDelete(int client, uint64_t expected, bool matched, int64_t invoke_ns,
                    int64_t complete_ns, Outcome outcome = Outcome::kOk) {
  Operation operation = Cas(client, "", expected, matched, invoke_ns, complete_ns, outcome);
  operation.cas_delete = true;
  return operation;
}

// A get that read value at version.
Operation GetAt(int client, std::string value, uint64_t version, int64_t invoke_ns,
                int64_t complete_ns) {
  Operation operation = Get(client, std::move(value), invoke_ns, complete_ns);
  operation.version = version;
  return operation;
}

TEST(LinearizabilityCasTest, SequentialCompareAndSetsFollowTheVersion) {
  ExpectLinearizable({Cas(0, "a", 0, true, 0, 1), GetAt(0, "a", 1, 2, 3),
                      Cas(0, "b", 1, true, 4, 5), Cas(0, "c", 1, false, 6, 7),
                      GetAt(0, "b", 2, 8, 9), CasDelete(0, 2, true, 10, 11),
                      Get(0, std::nullopt, 12, 13), Cas(0, "d", 0, true, 14, 15),
                      GetAt(0, "d", 1, 16, 17)});
}

TEST(LinearizabilityCasTest, TwoCompareAndSetsFromOneVersionCannotBothSucceed) {
  // Both read version 1 and both were told they wrote: the lost update a
  // compare-and-set exists to prevent.
  ExpectNotLinearizable({Put(0, "a", 0, 1), Cas(1, "b", 1, true, 2, 10),
                         Cas(2, "c", 1, true, 3, 11)});
  // One of them failing is fine, whichever.
  ExpectLinearizable({Put(0, "a", 0, 1), Cas(1, "b", 1, true, 2, 10),
                      Cas(2, "c", 1, false, 3, 11)});
  ExpectLinearizable({Put(0, "a", 0, 1), Cas(1, "b", 1, false, 2, 10),
                      Cas(2, "c", 1, true, 3, 11)});
}

TEST(LinearizabilityCasTest, AMismatchNeedsAnotherVersion) {
  // Nothing wrote since version 1 was read: the mismatch cannot be explained.
  ExpectNotLinearizable({Put(0, "a", 0, 1), GetAt(1, "a", 1, 2, 3),
                         Cas(1, "b", 1, false, 4, 5)});
  // A concurrent put moved the version on.
  ExpectLinearizable({Put(0, "a", 0, 1), GetAt(1, "a", 1, 2, 3), Put(2, "x", 4, 6),
                      Cas(1, "b", 1, false, 5, 7)});
}

TEST(LinearizabilityCasTest, VersionsReadMustMatchTheWritesCount) {
  ExpectNotLinearizable({Put(0, "a", 0, 1), Put(0, "b", 2, 3), GetAt(1, "b", 1, 4, 5)});
  ExpectLinearizable({Put(0, "a", 0, 1), Put(0, "b", 2, 3), GetAt(1, "b", 2, 4, 5)});
  // After a delete the next put starts at 1 again.
  ExpectLinearizable({Put(0, "a", 0, 1), Delete(0, 2, 3), Put(0, "b", 4, 5),
                      GetAt(1, "b", 1, 6, 7)});
}

TEST(LinearizabilityCasTest, AnAmbiguousWriteNobodyReadStillMovesTheVersion) {
  // The ambiguous put of "x" is never read, but only its taking effect
  // explains version 3 (without versions it would be dropped).
  ExpectLinearizable({Put(0, "a", 0, 1), Put(1, "x", 2, kNever, kAmbiguous),
                      Put(0, "b", 3, 4), GetAt(2, "b", 3, 5, 6)});
  // And an ambiguous compare-and-set takes effect only if it could match.
  ExpectNotLinearizable({Put(0, "a", 0, 1), Cas(1, "x", 5, true, 2, kNever, kAmbiguous),
                         GetAt(2, "x", 2, 3, 4)});
  ExpectLinearizable({Put(0, "a", 0, 1), Cas(1, "x", 1, true, 2, kNever, kAmbiguous),
                      GetAt(2, "x", 2, 3, 4)});
}

TEST(LinearizabilityCasTest, AnAmbiguousWriteThatWasReadMadeTheVersionItWasReadAt) {
  ExpectLinearizable({Put(0, "a", 0, 1), Put(1, "x", 2, kNever, kAmbiguous),
                      GetAt(2, "x", 2, 3, 4)});
  // Only one write came before it: it cannot have made version 5.
  ExpectNotLinearizable({Put(0, "a", 0, 1), Put(1, "x", 2, kNever, kAmbiguous),
                         GetAt(2, "x", 5, 3, 4)});
}

TEST(LinearizabilityCasTest, AFailedCompareAndSetChangesNothing) {
  ExpectNotLinearizable({Put(0, "a", 0, 1), Cas(1, "b", 7, false, 2, 3), GetAt(1, "b", 2, 4, 5)});
  ExpectLinearizable({Put(0, "a", 0, 1), Cas(1, "b", 7, false, 2, 3), GetAt(1, "a", 1, 4, 5)});
}

TEST(LinearizabilityTest, GivesUpWithUnknownBeyondTheBudget) {
  std::vector<Operation> history;
  for (int client = 0; client < 12; ++client) {
    history.push_back(Put(client, absl::StrCat("v", client), 0, 1000));
  }
  history.push_back(Get(12, "missing", 2000, 2010));
  CheckOptions options;
  options.max_steps = 50;
  const CheckResult result = Check(history, options);
  EXPECT_EQ(result.verdict, Verdict::kUnknown);
  EXPECT_NE(result.explanation.find("gave up"), std::string::npos) << result.explanation;
  // With the default budget the same history is decided.
  EXPECT_EQ(Check(history).verdict, Verdict::kNotLinearizable);
}

TEST(LinearizabilityTest, ExplanationNamesTheOperationThatCannotBePlaced) {
  const CheckResult result = Check({Put(0, "a", 0, 10), Put(0, "b", 20, 30), Get(1, "a", 40, 50)});
  ASSERT_EQ(result.verdict, Verdict::kNotLinearizable);
  EXPECT_NE(result.explanation.find("get() -> \"a\""), std::string::npos) << result.explanation;
  EXPECT_NE(result.explanation.find("put(\"b\")"), std::string::npos) << result.explanation;
}

TEST(LinearizabilityTest, FormatHistoryListsOperationsInInvocationOrder) {
  const std::string text =
      FormatHistory({Get(1, std::nullopt, 20, 30), Put(0, "a", 0, 10, kAmbiguous)});
  const size_t put = text.find("put(\"a\")");
  const size_t get = text.find("get() -> absent");
  ASSERT_NE(put, std::string::npos) << text;
  ASSERT_NE(get, std::string::npos) << text;
  EXPECT_LT(put, get);
  EXPECT_NE(text.find("+inf) ambiguous"), std::string::npos) << text;
  const std::string shortened =
      FormatHistory({Get(1, std::nullopt, 20, 30), Put(0, "a", 0, 10, kAmbiguous)}, 1);
  EXPECT_EQ(shortened.find("get()"), std::string::npos) << shortened;
  EXPECT_NE(shortened.find("... and 1 more"), std::string::npos) << shortened;
}

// ---- Randomized histories -------------------------------------------------

uint64_t TestSeed() {
  static const uint64_t seed = [] {
    uint64_t value = 0;
    const char* text = std::getenv("LOGKV_TEST_SEED");
    if (text == nullptr || !absl::SimpleAtoi(text, &value)) value = std::random_device{}();
    std::cout << "LOGKV_TEST_SEED=" << value << " (set it to replay)" << std::endl;
    return value;
  }();
  return seed;
}

int64_t Uniform(std::mt19937_64& random, int64_t low, int64_t high) {
  return std::uniform_int_distribution<int64_t>(low, high)(random);
}

// A history that is linearizable by construction: operations are executed
// one at a time against a sequential register at strictly increasing
// linearization points, and each is given an invocation before and a
// completion after its point, at random, while every client's operations
// stay sequential. Some writes are ambiguous (taking effect at their point or
// never), some fail definitely (no effect), some reads are ambiguous.
std::vector<Operation> GenerateLinearizable(std::mt19937_64& random, int clients, int operations) {
  std::vector<Operation> history;
  std::vector<int64_t> client_free_ns(clients, 0);
  std::optional<std::string> state;
  int64_t now_ns = 0;
  for (int i = 0; i < operations; ++i) {
    now_ns += Uniform(random, 1, 10) * 1000;
    std::vector<int> idle;
    for (int c = 0; c < clients; ++c) {
      if (client_free_ns[c] < now_ns) idle.push_back(c);
    }
    if (idle.empty()) {
      now_ns = *std::min_element(client_free_ns.begin(), client_free_ns.end()) + 1;
      for (int c = 0; c < clients; ++c) {
        if (client_free_ns[c] < now_ns) idle.push_back(c);
      }
    }
    const int client = idle[static_cast<size_t>(Uniform(random, 0, idle.size() - 1))];
    Operation operation;
    operation.client = client;
    operation.invoke_ns = Uniform(random, client_free_ns[client] + 1, now_ns);
    operation.complete_ns = now_ns + Uniform(random, 0, 40) * 1000;
    const int64_t kind = Uniform(random, 0, 99);
    const int64_t fate = Uniform(random, 0, 99);
    if (kind < 45) {
      operation.kind = OperationKind::kGet;
      operation.found = state.has_value();
      operation.value = state.value_or("");
      if (fate < 5) {
        operation.outcome = Outcome::kAmbiguous;
        operation.value = "garbage";
        operation.found = true;
      }
    } else {
      operation.kind = kind < 85 ? OperationKind::kPut : OperationKind::kDelete;
      if (operation.kind == OperationKind::kPut) operation.value = absl::StrCat("v", i);
      bool applies = true;
      if (fate < 10) {
        operation.outcome = Outcome::kAmbiguous;
        applies = Uniform(random, 0, 1) == 0;
      } else if (fate < 13) {
        operation.outcome = Outcome::kFailed;
        applies = false;
      }
      if (applies) {
        state = operation.kind == OperationKind::kPut ? std::optional<std::string>(operation.value)
                                                      : std::nullopt;
      }
    }
    client_free_ns[client] = operation.complete_ns;
    history.push_back(std::move(operation));
  }
  return history;
}

bool IsCompletedWrite(const Operation& operation) {
  return operation.outcome == Outcome::kOk && operation.kind != OperationKind::kGet;
}

// Mutations that make any history non-linearizable, each with the reason
// written next to it; they return false when the history offers no place
// for them. Values of puts are unique in generated histories.
enum class Mutation { kStaleRead, kFutureRead, kStaleAbsentRead };

const char* MutationName(Mutation mutation) {
  switch (mutation) {
    case Mutation::kStaleRead:
      return "stale read";
    case Mutation::kFutureRead:
      return "future read";
    case Mutation::kStaleAbsentRead:
      return "stale absent read";
  }
  return "?";
}

bool Mutate(std::mt19937_64& random, Mutation mutation, std::vector<Operation>* history) {
  std::vector<size_t> reads;
  for (size_t i = 0; i < history->size(); ++i) {
    const Operation& operation = (*history)[i];
    if (operation.kind == OperationKind::kGet && operation.outcome == Outcome::kOk) {
      reads.push_back(i);
    }
  }
  std::shuffle(reads.begin(), reads.end(), random);
  const std::vector<Operation>& h = *history;
  // Each search below looks at a read in O(operations), with what does not
  // depend on the read worked out once per history: the histories have up to
  // 600 operations, and a search of O(operations²) per read made this test's
  // run time, not the checker's, under the sanitizers.
  switch (mutation) {
    case Mutation::kStaleRead: {
      // put(v) completes before a completed write w starts, and w completes
      // before the read starts: the read follows w, after which nothing
      // writes v again, so it cannot return v. For each completed write, the
      // first such put (h.size(): none).
      std::vector<size_t> put_before(h.size(), h.size());
      for (size_t w = 0; w < h.size(); ++w) {
        if (!IsCompletedWrite(h[w])) continue;
        for (size_t p = 0; p < h.size(); ++p) {
          if (p != w && h[p].kind == OperationKind::kPut && h[p].outcome == Outcome::kOk &&
              h[p].complete_ns < h[w].invoke_ns) {
            put_before[w] = p;
            break;
          }
        }
      }
      for (size_t g : reads) {
        for (size_t w = 0; w < h.size(); ++w) {
          if (put_before[w] == h.size() || h[w].complete_ns >= h[g].invoke_ns) continue;
          (*history)[g].found = true;
          (*history)[g].value = h[put_before[w]].value;
          return true;
        }
      }
      return false;
    }
    case Mutation::kFutureRead:
      // The only put of v starts after the read has completed.
      for (size_t g : reads) {
        for (size_t p = 0; p < h.size(); ++p) {
          if (h[p].kind == OperationKind::kPut && h[p].outcome != Outcome::kFailed &&
              h[p].invoke_ns > h[g].complete_ns) {
            (*history)[g].found = true;
            (*history)[g].value = h[p].value;
            return true;
          }
        }
      }
      return false;
    case Mutation::kStaleAbsentRead:
      // A completed put w precedes the read, and no delete can fall between
      // them: every delete either completed before w started or started
      // after the read completed (an ambiguous one is pending forever).
      for (size_t g : reads) {
        const Operation& read = h[g];
        // The deletes that do not start after the read must all have
        // completed before w started: none may be ambiguous, and w must
        // start after the last of them completed.
        bool ambiguous_delete = false;
        int64_t last_delete_ns = std::numeric_limits<int64_t>::min();
        for (const Operation& other : h) {
          if (other.kind != OperationKind::kDelete || other.outcome == Outcome::kFailed ||
              other.invoke_ns > read.complete_ns) {
            continue;
          }
          if (other.outcome != Outcome::kOk) ambiguous_delete = true;
          last_delete_ns = std::max(last_delete_ns, other.complete_ns);
        }
        if (ambiguous_delete) continue;
        for (size_t w = 0; w < h.size(); ++w) {
          if (h[w].kind != OperationKind::kPut || h[w].outcome != Outcome::kOk ||
              h[w].complete_ns >= read.invoke_ns ||
              last_delete_ns >= h[w].invoke_ns) {
            continue;
          }
          (*history)[g].found = false;
          (*history)[g].value.clear();
          return true;
        }
      }
      return false;
  }
  return false;
}

TEST(LinearizabilityRandomizedTest, AcceptsGeneratedHistoriesAndRejectsMutatedOnes) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("LOGKV_TEST_SEED=", seed));
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  std::mt19937_64 random(seed);
  int accepted = 0;
  int rejected = 0;
  uint64_t max_steps_seen = 0;
  for (int round = 0; round < 600; ++round) {
    const int clients = static_cast<int>(Uniform(random, 1, 8));
    const int operations = static_cast<int>(Uniform(random, 1, round < 500 ? 60 : 600));
    const std::vector<Operation> history = GenerateLinearizable(random, clients, operations);
    const CheckResult result = Check(history);
    max_steps_seen = std::max(max_steps_seen, result.steps);
    ASSERT_EQ(result.verdict, Verdict::kLinearizable)
        << "round " << round << ": a generated history was rejected (" << result.steps
        << " steps)\n"
        << FormatHistory(history) << result.explanation;
    ++accepted;
    for (Mutation mutation :
         {Mutation::kStaleRead, Mutation::kFutureRead, Mutation::kStaleAbsentRead}) {
      std::vector<Operation> mutated = history;
      if (!Mutate(random, mutation, &mutated)) continue;
      const CheckResult mutated_result = Check(mutated);
      ASSERT_EQ(mutated_result.verdict, Verdict::kNotLinearizable)
          << "round " << round << ": a history with a " << MutationName(mutation)
          << " was not rejected\n"
          << FormatHistory(mutated);
      ++rejected;
    }
  }
  std::cout << "accepted " << accepted << " generated histories, rejected " << rejected
            << " mutated ones; at most " << max_steps_seen << " search steps" << std::endl;
  // Enough mutations found a place to mean something.
  EXPECT_GT(rejected, 600);
}

// The definition, searched by brute force: some order of the completed
// operations and of any subset of the ambiguous writes that respects real
// time (a before b when a completed strictly before b was invoked) and the
// register's sequential specification. Exponential: tiny histories only.
bool BruteForceLinearizable(const std::vector<Operation>& history) {
  std::vector<Operation> operations;
  for (const Operation& operation : history) {
    if (operation.outcome == Outcome::kFailed) continue;
    if (operation.kind == OperationKind::kGet && operation.outcome != Outcome::kOk) continue;
    operations.push_back(operation);
  }
  std::vector<bool> used(operations.size(), false);
  auto precedes = [](const Operation& a, const Operation& b) {
    return a.outcome == Outcome::kOk && a.complete_ns < b.invoke_ns;
  };
  std::function<bool(std::optional<std::string>)> search = [&](std::optional<std::string> state) {
    bool all_required_used = true;
    for (size_t i = 0; i < operations.size(); ++i) {
      if (!used[i] && operations[i].outcome == Outcome::kOk) all_required_used = false;
    }
    if (all_required_used) return true;
    for (size_t i = 0; i < operations.size(); ++i) {
      if (used[i]) continue;
      bool minimal = true;
      for (size_t j = 0; j < operations.size(); ++j) {
        if (j != i && !used[j] && precedes(operations[j], operations[i])) minimal = false;
      }
      if (!minimal) continue;
      const Operation& operation = operations[i];
      std::optional<std::string> next = state;
      if (operation.kind == OperationKind::kPut) next = operation.value;
      if (operation.kind == OperationKind::kDelete) next = std::nullopt;
      if (operation.kind == OperationKind::kGet &&
          (operation.found ? state != operation.value : state.has_value())) {
        continue;
      }
      used[i] = true;
      const bool found = search(next);
      used[i] = false;
      if (found) return true;
    }
    return false;
  };
  return search(std::nullopt);
}

TEST(LinearizabilityRandomizedTest, AgreesWithBruteForceOnSmallRandomHistories) {
  // Arbitrary histories (most are not linearizable): values repeat, times
  // overlap heavily and touch, outcomes are mixed.
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("LOGKV_TEST_SEED=", seed));
  std::mt19937_64 random(seed + 1);
  int linearizable = 0;
  const int kRounds = 4000;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<Operation> history;
    const int size = static_cast<int>(Uniform(random, 1, 7));
    for (int i = 0; i < size; ++i) {
      const int64_t invoke_ns = Uniform(random, 0, 20);
      const int64_t complete_ns = invoke_ns + Uniform(random, 0, 10);
      const int64_t fate = Uniform(random, 0, 9);
      const Outcome outcome = fate < 7 ? Outcome::kOk : fate < 9 ? kAmbiguous : kFailed;
      const int64_t value = Uniform(random, 0, 2);
      switch (Uniform(random, 0, 2)) {
        case 0:
          history.push_back(Put(i, absl::StrCat("v", value), invoke_ns, complete_ns, outcome));
          break;
        case 1:
          history.push_back(Delete(i, invoke_ns, complete_ns, outcome));
          break;
        default:
          history.push_back(Get(
              i, value == 2 ? std::nullopt : std::optional<std::string>(absl::StrCat("v", value)),
              invoke_ns, complete_ns, outcome));
          break;
      }
    }
    const bool expected = BruteForceLinearizable(history);
    const CheckResult result = Check(history);
    ASSERT_EQ(result.verdict, expected ? Verdict::kLinearizable : Verdict::kNotLinearizable)
        << "round " << round << ", brute force says " << (expected ? "yes" : "no") << "\n"
        << FormatHistory(history) << result.explanation;
    if (expected) ++linearizable;
  }
  std::cout << linearizable << " of " << kRounds << " random histories were linearizable"
            << std::endl;
  // Both verdicts were exercised.
  EXPECT_GT(linearizable, kRounds / 10);
  EXPECT_LT(linearizable, kRounds * 9 / 10);
}

}  // namespace
}  // namespace logkv::test::linearizability
