#include "tests/cluster/linearizability.h"

#include <algorithm>
#include <cstddef>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace logkv::test::linearizability {
namespace {

constexpr int64_t kInfinityNs = std::numeric_limits<int64_t>::max();
// The register's state and a get's expectation: a value id, or absent.
constexpr int kAbsent = -1;

// An operation as the search sees it: values replaced by small integers.
struct ModelOperation {
  OperationKind kind;
  int value_id;   // put: the value written; get: the value read or kAbsent
  bool required;  // completed: must be linearized; ambiguous writes need not be
  size_t source;  // index into the caller's history
  // Ambiguous writes with the same effect (every delete; puts of one value)
  // form a group and are linearized in invocation order (rank): which one of
  // two interchangeable pending writes takes effect cannot be told apart, so
  // trying both orders would only multiply the search by their count.
  int group = -1;
  int rank = 0;
  // With versions (Operation's fields of the same names).
  uint64_t version = 0;
  uint64_t expected_version = 0;
  bool cas_delete = false;
  bool cas_matched = true;
};

// The register: a value id (or kAbsent) and, when versions are modelled,
// the key's version. The search knows states by small integers (interned).
struct RegisterState {
  int value_id = kAbsent;
  uint64_t version = 0;

  bool operator==(const RegisterState&) const = default;
  template <typename H>
  friend H AbslHashValue(H hash, const RegisterState& state) {
    return H::combine(std::move(hash), state.value_id, state.version);
  }
};

// One call or return entry of the doubly linked list. Index 0 is the head
// sentinel; lifted entries keep their links so that Unlift can put them back.
struct Entry {
  int64_t time_ns = 0;
  bool is_call = false;
  int operation = -1;
  int match = -1;  // a call's return entry
  int previous = -1;
  int next = -1;
};

// A configuration of the search: which operations are linearized, and the
// register's state after them.
struct Configuration {
  std::vector<uint64_t> linearized;
  int state;

  bool operator==(const Configuration& other) const {
    return state == other.state && linearized == other.linearized;
  }
  template <typename H>
  friend H AbslHashValue(H hash, const Configuration& configuration) {
    return H::combine(std::move(hash), configuration.linearized, configuration.state);
  }
};

class Search {
 public:
  // intervals[i]: operation i's invocation and completion (kInfinityNs when
  // it may still take effect).
  Search(std::vector<ModelOperation> operations,
         const std::vector<std::pair<int64_t, int64_t>>& intervals, RegisterState initial_state,
         bool versioned, uint64_t max_steps)
      : operations_(std::move(operations)),
        versioned_(versioned),
        state_(Intern(initial_state)),
        max_steps_(max_steps) {
    BuildList(intervals);
    int groups = 0;
    for (const ModelOperation& operation : operations_) {
      groups = std::max(groups, operation.group + 1);
    }
    group_next_rank_.assign(static_cast<size_t>(groups), 0);
    linearized_.assign((operations_.size() + 63) / 64, 0);
    for (const ModelOperation& operation : operations_) {
      if (operation.required) ++required_left_;
    }
  }

  Verdict Run() {
    int entry = entries_[0].next;
    while (required_left_ > 0) {
      if (++steps_ > max_steps_) return Verdict::kUnknown;
      if (entry == -1) {
        // Only reachable when every remaining entry was skipped, which the
        // return entries of required operations prevent; kept as a guard.
        if (!Backtrack(&entry)) return Verdict::kNotLinearizable;
        continue;
      }
      const Entry& current = entries_[entry];
      if (current.is_call) {
        const ModelOperation& operation = operations_[current.operation];
        int next_state;
        const bool in_turn =
            operation.group < 0 || group_next_rank_[operation.group] == operation.rank;
        if (in_turn && Step(state_, operation, &next_state)) {
          SetBit(current.operation, true);
          const bool fresh = seen_.insert(Configuration{linearized_, next_state}).second;
          if (fresh) {
            stack_.push_back({entry, state_});
            state_ = next_state;
            if (operation.required) --required_left_;
            if (operation.group >= 0) ++group_next_rank_[operation.group];
            Lift(entry);
            entry = entries_[0].next;
            continue;
          }
          SetBit(current.operation, false);
        }
        entry = current.next;
        continue;
      }
      // A return entry: its operation had to be linearized by now.
      NoteDeadEnd(current.operation);
      if (!Backtrack(&entry)) return Verdict::kNotLinearizable;
    }
    return Verdict::kLinearizable;
  }

  uint64_t steps() const { return steps_; }
  // The longest linearization reached (indices into the caller's history),
  // and the operation that could not follow it.
  const std::vector<size_t>& best_prefix() const { return best_prefix_; }
  size_t blocked_source() const { return blocked_source_; }

 private:
  struct Frame {
    int entry;           // the call entry linearized
    int previous_state;  // the state before it
  };

  int Intern(const RegisterState& state) {
    const auto [it, added] = state_ids_.try_emplace(state, static_cast<int>(states_.size()));
    if (added) states_.push_back(state);
    return it->second;
  }

  // The register's sequential specification: the state after the
  // operation, or false when the operation cannot happen in that state.
  bool Step(int state_id, const ModelOperation& operation, int* next_state) {
    const RegisterState state = states_[static_cast<size_t>(state_id)];
    const uint64_t current = state.value_id == kAbsent ? 0 : state.version;
    RegisterState next = state;
    auto put = [&](int value_id) {
      next.value_id = value_id;
      next.version = versioned_ ? current + 1 : 0;
      return operation.version == 0 || operation.version == next.version;
    };
    auto remove = [&] {
      next.value_id = kAbsent;
      next.version = 0;
      return true;
    };
    bool legal = false;
    switch (operation.kind) {
      case OperationKind::kPut:
        legal = put(operation.value_id);
        break;
      case OperationKind::kDelete:
        legal = remove();
        break;
      case OperationKind::kGet:
        legal = operation.value_id == state.value_id &&
                (operation.version == 0 || operation.version == current);
        break;
      case OperationKind::kCompareAndSet:
        if (!operation.cas_matched) {
          legal = current != operation.expected_version;
        } else if (current == operation.expected_version) {
          legal = operation.cas_delete ? state.value_id != kAbsent && remove()
                                       : put(operation.value_id);
        }
        break;
    }
    if (!legal) return false;
    *next_state = Intern(next);
    return true;
  }

  void SetBit(int operation, bool value) {
    uint64_t& word = linearized_[static_cast<size_t>(operation) / 64];
    const uint64_t bit = uint64_t{1} << (operation % 64);
    word = value ? (word | bit) : (word & ~bit);
  }

  // Removes a call entry and its return entry from the list.
  void Lift(int call) {
    Entry& entry = entries_[call];
    entries_[entry.previous].next = entry.next;
    if (entry.next != -1) entries_[entry.next].previous = entry.previous;
    Entry& match = entries_[entry.match];
    entries_[match.previous].next = match.next;
    if (match.next != -1) entries_[match.next].previous = match.previous;
  }

  // Puts back what the last Lift removed (in the reverse order).
  void Unlift(int call) {
    Entry& entry = entries_[call];
    Entry& match = entries_[entry.match];
    entries_[match.previous].next = entry.match;
    if (match.next != -1) entries_[match.next].previous = entry.match;
    entries_[entry.previous].next = call;
    if (entry.next != -1) entries_[entry.next].previous = call;
  }

  // Undoes the last linearization and continues after its call entry; false
  // when there is nothing left to undo.
  bool Backtrack(int* entry) {
    if (stack_.empty()) return false;
    const Frame frame = stack_.back();
    stack_.pop_back();
    const int operation = entries_[frame.entry].operation;
    SetBit(operation, false);
    if (operations_[operation].required) ++required_left_;
    if (operations_[operation].group >= 0) --group_next_rank_[operations_[operation].group];
    state_ = frame.previous_state;
    Unlift(frame.entry);
    *entry = entries_[frame.entry].next;
    return true;
  }

  void NoteDeadEnd(int blocked_operation) {
    if (have_best_ && stack_.size() <= best_prefix_.size()) return;
    have_best_ = true;
    best_prefix_.clear();
    for (const Frame& frame : stack_) {
      best_prefix_.push_back(operations_[entries_[frame.entry].operation].source);
    }
    blocked_source_ = operations_[blocked_operation].source;
  }

  // The list of call and return entries in time order, after the sentinel.
  void BuildList(const std::vector<std::pair<int64_t, int64_t>>& intervals) {
    struct Item {
      int64_t time_ns;
      bool is_call;
      int operation;
    };
    std::vector<Item> items;
    items.reserve(2 * intervals.size());
    for (size_t i = 0; i < intervals.size(); ++i) {
      items.push_back({intervals[i].first, true, static_cast<int>(i)});
      items.push_back({intervals[i].second, false, static_cast<int>(i)});
    }
    // At equal times calls come first: operations that touch are taken as
    // concurrent, the permissive reading of a clock's resolution.
    std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
      if (a.time_ns != b.time_ns) return a.time_ns < b.time_ns;
      return a.is_call && !b.is_call;
    });
    entries_.reserve(1 + items.size());
    entries_.push_back(Entry{});
    std::vector<int> call_of(intervals.size(), -1);
    std::vector<int> return_of(intervals.size(), -1);
    for (const Item& item : items) {
      Entry entry;
      entry.time_ns = item.time_ns;
      entry.is_call = item.is_call;
      entry.operation = item.operation;
      entry.previous = static_cast<int>(entries_.size()) - 1;
      entries_.back().next = static_cast<int>(entries_.size());
      (item.is_call ? call_of : return_of)[item.operation] = static_cast<int>(entries_.size());
      entries_.push_back(entry);
    }
    entries_.back().next = -1;
    for (size_t i = 0; i < intervals.size(); ++i) entries_[call_of[i]].match = return_of[i];
  }

  std::vector<ModelOperation> operations_;
  const bool versioned_;
  std::vector<RegisterState> states_;
  absl::flat_hash_map<RegisterState, int> state_ids_;
  std::vector<Entry> entries_;
  std::vector<uint64_t> linearized_;
  absl::flat_hash_set<Configuration> seen_;
  std::vector<Frame> stack_;
  std::vector<int> group_next_rank_;  // per group: the rank that may go next
  int state_;
  size_t required_left_ = 0;
  uint64_t steps_ = 0;
  const uint64_t max_steps_;
  bool have_best_ = false;
  std::vector<size_t> best_prefix_;
  size_t blocked_source_ = 0;
};

std::string FormatTimeMs(int64_t ns) { return absl::StrFormat("%.3f", ns / 1e6); }

}  // namespace

const char* VerdictName(Verdict verdict) {
  switch (verdict) {
    case Verdict::kLinearizable:
      return "linearizable";
    case Verdict::kNotLinearizable:
      return "NOT linearizable";
    case Verdict::kUnknown:
      return "unknown";
  }
  return "?";
}

std::string FormatOperation(const Operation& operation, int64_t origin_ns) {
  std::string call;
  switch (operation.kind) {
    case OperationKind::kPut:
      call = absl::StrCat("put(\"", operation.value, "\")");
      if (operation.version != 0) absl::StrAppend(&call, " -> v", operation.version);
      break;
    case OperationKind::kDelete:
      call = "delete()";
      break;
    case OperationKind::kCompareAndSet:
      call = operation.cas_delete
                 ? absl::StrCat("delete(if_version=", operation.expected_version, ")")
                 : absl::StrCat("put(\"", operation.value, "\", if_version=",
                                operation.expected_version, ")");
      if (operation.outcome == Outcome::kOk) {
        absl::StrAppend(&call, operation.cas_matched ? " -> done" : " -> mismatch");
        if (operation.cas_matched && operation.version != 0) {
          absl::StrAppend(&call, " v", operation.version);
        }
      }
      break;
    case OperationKind::kGet:
      if (operation.outcome != Outcome::kOk) {
        call = "get()";
      } else if (operation.found) {
        call = absl::StrCat("get() -> \"", operation.value, "\"");
        if (operation.version != 0) absl::StrAppend(&call, " v", operation.version);
      } else {
        call = "get() -> absent";
      }
      break;
  }
  const std::string end = operation.outcome == Outcome::kAmbiguous
                              ? "+inf)"
                              : FormatTimeMs(operation.complete_ns - origin_ns) + " ms]";
  const char* outcome = operation.outcome == Outcome::kOk          ? "ok"
                        : operation.outcome == Outcome::kAmbiguous ? "ambiguous"
                                                                   : "failed";
  return absl::StrCat("client ", operation.client, ": ", call, " [",
                      FormatTimeMs(operation.invoke_ns - origin_ns), " ms, ", end, " ", outcome,
                      operation.where.empty() ? "" : " via ", operation.where);
}

std::string FormatHistory(const std::vector<Operation>& history, size_t max_operations) {
  if (history.empty()) return "(empty history)\n";
  std::vector<const Operation*> sorted;
  for (const Operation& operation : history) sorted.push_back(&operation);
  std::stable_sort(sorted.begin(), sorted.end(), [](const Operation* a, const Operation* b) {
    return a->invoke_ns < b->invoke_ns;
  });
  const int64_t origin_ns = sorted.front()->invoke_ns;
  std::string out;
  for (size_t i = 0; i < sorted.size(); ++i) {
    if (max_operations != 0 && i == max_operations) {
      absl::StrAppend(&out, "  ... and ", sorted.size() - i, " more\n");
      break;
    }
    absl::StrAppend(&out, "  ", FormatOperation(*sorted[i], origin_ns), "\n");
  }
  return out;
}

CheckResult Check(const std::vector<Operation>& history, const CheckOptions& options) {
  absl::flat_hash_map<std::string, int> value_ids;
  auto id_of = [&value_ids](const std::string& value) {
    return value_ids.try_emplace(value, static_cast<int>(value_ids.size())).first->second;
  };
  // What the reads saw: per value, the latest completion of a read of it.
  // And how many puts (that may have taken effect) write each value.
  absl::flat_hash_map<std::string, int64_t> last_read_of_ns;
  absl::flat_hash_map<std::string, int> writers_of;
  // Versions are modelled when the history has any.
  bool versioned = false;
  for (const Operation& operation : history) {
    versioned = versioned || operation.kind == OperationKind::kCompareAndSet ||
                operation.version != 0;
  }
  auto writes_value = [](const Operation& operation) {
    return operation.kind == OperationKind::kPut ||
           (operation.kind == OperationKind::kCompareAndSet && !operation.cas_delete);
  };
  // The version reads saw each value at (values are written once each in
  // the tests; a value read at two versions keeps none).
  absl::flat_hash_map<std::string, uint64_t> version_read_of;
  for (const Operation& operation : history) {
    if (operation.kind == OperationKind::kGet && operation.outcome == Outcome::kOk &&
        operation.found && operation.version != 0) {
      const auto [it, added] = version_read_of.try_emplace(operation.value, operation.version);
      if (!added && it->second != operation.version) it->second = 0;
    }
  }
  for (const Operation& operation : history) {
    if (operation.kind == OperationKind::kGet && operation.outcome == Outcome::kOk &&
        operation.found) {
      int64_t& last_ns =
          last_read_of_ns.try_emplace(operation.value, operation.complete_ns).first->second;
      last_ns = std::max(last_ns, operation.complete_ns);
    }
    if (writes_value(operation) && operation.outcome != Outcome::kFailed) {
      ++writers_of[operation.value];
    }
  }
  struct Pending {
    ModelOperation model;
    int64_t invoke_ns;
    int64_t complete_ns;
  };
  std::vector<Pending> pending;
  int64_t origin_ns = kInfinityNs;
  for (size_t i = 0; i < history.size(); ++i) {
    const Operation& operation = history[i];
    if (operation.outcome == Outcome::kFailed) continue;
    const bool is_read = operation.kind == OperationKind::kGet;
    // A read that failed observed nothing the checker could use.
    if (is_read && operation.outcome == Outcome::kAmbiguous) continue;
    ModelOperation model;
    model.kind = operation.kind;
    model.value_id = kAbsent;
    model.required = operation.outcome == Outcome::kOk;
    model.source = i;
    model.version = operation.version;
    model.expected_version = operation.expected_version;
    model.cas_delete = operation.cas_delete;
    model.cas_matched = operation.cas_matched;
    int64_t complete_ns = model.required ? operation.complete_ns : kInfinityNs;
    if (writes_value(operation) && !model.required) {
      const auto read = last_read_of_ns.find(operation.value);
      // Nobody read its value: had it taken effect, no read could fall
      // between it and the next write, so leaving it out explains the same.
      // Not with versions: it would still have moved the version on.
      if (read == last_read_of_ns.end() && !versioned) continue;
      if (read == last_read_of_ns.end()) {
        origin_ns = std::min(origin_ns, operation.invoke_ns);
        model.value_id = id_of(operation.value);
        pending.push_back({model, operation.invoke_ns, kInfinityNs});
        continue;
      }
      // The only writer of a value that was read took effect before the
      // last read of it completed.
      const bool initial = options.initially_found && options.initial_value == operation.value;
      if (writers_of[operation.value] == 1 && !initial) {
        model.required = true;
        complete_ns = read->second;
        // And it made the version its readers saw.
        if (versioned && model.version == 0) {
          const auto version = version_read_of.find(operation.value);
          if (version != version_read_of.end()) model.version = version->second;
        }
      }
    }
    if (writes_value(operation) || (is_read && operation.found)) {
      model.value_id = id_of(operation.value);
    }
    origin_ns = std::min(origin_ns, operation.invoke_ns);
    pending.push_back({model, operation.invoke_ns, std::max(operation.invoke_ns, complete_ns)});
  }
  // Groups of interchangeable ambiguous writes, ranked by invocation.
  std::stable_sort(pending.begin(), pending.end(),
                   [](const Pending& a, const Pending& b) { return a.invoke_ns < b.invoke_ns; });
  absl::flat_hash_map<int, int> group_of_value;  // kAbsent: deletes
  std::vector<int> group_size;
  std::vector<ModelOperation> operations;
  std::vector<std::pair<int64_t, int64_t>> intervals;
  for (Pending& item : pending) {
    // Only plain puts and deletes are interchangeable by their value alone.
    const bool plain = item.model.kind == OperationKind::kPut ||
                       item.model.kind == OperationKind::kDelete;
    if (!item.model.required && plain && item.model.version == 0) {
      const auto [it, added] =
          group_of_value.try_emplace(item.model.value_id, static_cast<int>(group_size.size()));
      if (added) group_size.push_back(0);
      item.model.group = it->second;
      item.model.rank = group_size[it->second]++;
    }
    operations.push_back(item.model);
    intervals.emplace_back(item.invoke_ns, item.complete_ns);
  }
  CheckResult result;
  result.operations = operations.size();
  RegisterState initial_state;
  if (options.initially_found) {
    initial_state.value_id = id_of(options.initial_value);
    initial_state.version = versioned ? options.initial_version : 0;
  }
  Search search(std::move(operations), intervals, initial_state, versioned, options.max_steps);
  result.verdict = search.Run();
  result.steps = search.steps();
  if (result.verdict == Verdict::kUnknown) {
    result.explanation =
        absl::StrCat("gave up after ", options.max_steps, " steps (raise CheckOptions::max_steps)");
  } else if (result.verdict == Verdict::kNotLinearizable) {
    std::string text = absl::StrCat("longest linearization found (", search.best_prefix().size(),
                                    " operations):\n");
    for (size_t source : search.best_prefix()) {
      absl::StrAppend(&text, "  ", FormatOperation(history[source], origin_ns), "\n");
    }
    absl::StrAppend(&text,
                    "cannot be followed by any pending operation before this one returns:\n  ",
                    FormatOperation(history[search.blocked_source()], origin_ns), "\n");
    result.explanation = std::move(text);
  }
  return result;
}

}  // namespace logkv::test::linearizability
