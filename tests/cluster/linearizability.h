// A linearizability checker for the history of one key seen as a register
// with put(value), get() -> value | absent and delete(), as the cluster tests
// record it against strong (X-Consistency: strong) operations; and, when the
// history has versions, the key's version too (1 after a put to an absent
// key, +1 per put, absent after a delete) with compare-and-set: a put or
// delete that takes effect only if the key is at an expected version (0:
// absent), and is answered either as done or as a mismatch.
//
// The search is Wing and Gong's ("Testing and verifying concurrent objects",
// 1993) with the memoization of Lowe ("Testing for linearizability", 2017)
// that Porcupine (github.com/anishathalye/porcupine) also uses: operations
// sit in a doubly linked list of call and return entries ordered by time; the
// search linearizes a pending call whose model step is legal, lifts it out of
// the list and starts again from the head, and backtracks when it reaches a
// return entry (that operation could not be placed before it had to be). A
// configuration (set of operations linearized, register state) seen once is
// never explored again, since the rest of the search depends on nothing else.
//
// Uncertain outcomes. A write that timed out or failed ambiguously (a 503 or
// a connection reset: the coordinator may have applied it on some owners)
// may have taken effect at any moment after its invocation, or never: it is
// modelled as pending until +infinity and need not be linearized at all.
// Reads that failed tell nothing and are dropped, as are operations that
// failed definitely (a 4xx: nothing was applied).
//
// Bounded: the search gives up with kUnknown after max_steps steps, since its
// worst case is exponential in the number of overlapping operations.
//
// Thread-safety: Check is a pure function of its arguments.
#ifndef LOGKV_TESTS_CLUSTER_LINEARIZABILITY_H_
#define LOGKV_TESTS_CLUSTER_LINEARIZABILITY_H_

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace logkv::test::linearizability {

enum class OperationKind { kPut, kGet, kDelete, kCompareAndSet };

enum class Outcome {
  kOk,         // completed: the answer was received (a get's answer in found/value)
  kAmbiguous,  // timed out, 503, connection reset: may or may not have taken effect
  kFailed,     // definitely not applied (e.g. a 4xx): dropped from the history
};

struct Operation {
  int client = 0;  // only for messages
  std::string where;  // only for messages: e.g. the node that was asked
  OperationKind kind = OperationKind::kGet;
  // put: the value written. get with found: the value read.
  std::string value;
  // get: whether a value was read (false: the key was absent or deleted).
  bool found = false;
  // The key's version a get read or a put (plain or compare-and-set) made;
  // 0: not known (not checked). Any version in a history makes the checker
  // model versions (as does any compare-and-set).
  uint64_t version = 0;
  // kCompareAndSet: the version the key had to be at (0: absent), whether it
  // deletes (else it puts value), and whether it was answered as done
  // (matched) or as a mismatch (which changed nothing).
  uint64_t expected_version = 0;
  bool cas_delete = false;
  bool cas_matched = true;
  // Monotonic times in nanoseconds; complete_ns is ignored when the outcome is
  // kAmbiguous (the operation is pending until +infinity).
  // REQUIRES: invoke_ns <= complete_ns for completed operations.
  int64_t invoke_ns = 0;
  int64_t complete_ns = 0;
  Outcome outcome = Outcome::kOk;
};

enum class Verdict { kLinearizable, kNotLinearizable, kUnknown };

const char* VerdictName(Verdict verdict);

struct CheckOptions {
  // Steps (attempts to linearize one call entry, plus backtracks) before the
  // search gives up with kUnknown.
  uint64_t max_steps = 20'000'000;
  // The register's value before the history starts; absent unless set.
  bool initially_found = false;
  std::string initial_value;
  uint64_t initial_version = 1;  // with versions, when initially_found
};

struct CheckResult {
  Verdict verdict = Verdict::kUnknown;
  // Steps taken by the search.
  uint64_t steps = 0;
  // Operations checked (after dropping failed ones and ambiguous reads).
  size_t operations = 0;
  // kNotLinearizable: the longest linearization found, and the operation
  // that could not be placed after it. kUnknown: why.
  std::string explanation;
};

// Checks one register's history. Operations may come in any order.
CheckResult Check(const std::vector<Operation>& history, const CheckOptions& options = {});

// One line per operation, sorted by invocation, times relative to the first
// invocation (for failure messages); at most max_operations lines when it is
// not 0, then a count of the rest.
std::string FormatHistory(const std::vector<Operation>& history, size_t max_operations = 0);
std::string FormatOperation(const Operation& operation, int64_t origin_ns);

}  // namespace logkv::test::linearizability

#endif  // LOGKV_TESTS_CLUSTER_LINEARIZABILITY_H_
