// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_REQUEST_LOG_H_
#define IOMMU_CORE_BROKER_REQUEST_LOG_H_

// Exactly-once mutating calls (docs/design.md#request-ids).
//
// A client names each mutating call with a request id of its choosing and
// sends every retry of that call with the same id. The first call that
// succeeds records its reply, in the commit of its last change (so the
// store holds the reply exactly when it holds the call's effects); a retry
// of the id, in this process or after a restart, gets the recorded reply
// and changes nothing. A call that fails changed nothing, so it records
// nothing and a retry runs it again.
//
// Ids are scoped to the principal that sent them: one client cannot see or
// answer another's (an unknown id and another principal's id are the same:
// new). An id is remembered for a window (default 10 minutes) and up to a
// count and a byte budget per principal, oldest evicted first: a retry after
// that runs again. A reuse of a remembered id for a different request
// (another method or other bytes) is refused, and a retry that arrives while
// the first attempt is still running waits for it.
//
//   RequestLog log(options);
//   RequestScope scope(log, {principal, id, fingerprint}, encoder);
//   auto replay = scope.Begin(deadline);      // reply bytes, or run it:
//   ... the broker call; its DurableReply captures the result (encoder) and
//       its last commit carries the record ...
//   // ~RequestScope ends the call and wakes a waiting retry.

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/broker/state.h"

namespace iommu::core {

struct RequestLogOptions {
  absl::Duration window = absl::Minutes(10);
  size_t max_per_principal = 4096;
  size_t max_bytes_per_principal = size_t{64} << 20;
  std::function<absl::Time()> now = [] { return absl::Now(); };
};

// The longest request id a client may send.
inline constexpr size_t kMaxRequestIdBytes = 64;

// OK when `id` is 1..64 characters of [A-Za-z0-9._:-]; else
// INVALID_ARGUMENT naming `field` and the value (shortened).
absl::Status CheckRequestId(absl::string_view field, absl::string_view id);

// A stable 64-bit digest of a call's method and request bytes: a
// retry must repeat both.
uint64_t RequestFingerprint(absl::string_view method, absl::string_view request_bytes);

// The remembered replies. Thread-safe; its lock is a leaf (taken under any
// broker lock, never holding one).
class RequestLog {
 public:
  explicit RequestLog(RequestLogOptions options = {}) : options_(std::move(options)) {}
  RequestLog(const RequestLog&) = delete;
  RequestLog& operator=(const RequestLog&) = delete;

  // Begins the call `key` (principal, request_id and fingerprint set):
  // - the recorded reply when the id was answered within the window;
  // - nullopt when the caller must run it: the id is now in flight, and End
  //   must follow;
  // - INVALID_ARGUMENT when the id was used for a different request;
  // - ABORTED when an attempt with the id is still running at `deadline`.
  absl::StatusOr<std::optional<std::string>> Begin(const RequestState& key, absl::Time deadline)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Remembers a reply (its call's last commit is being journaled) and
  // appends to `deletes` the records this evicts, to be deleted in the same
  // commit.
  void Record(const RequestState& state, std::vector<std::pair<std::string, std::string>>* deletes)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Ends a begun call, recorded or not, and wakes a retry waiting for it.
  void End(const RequestState& key) ABSL_LOCKS_EXCLUDED(mu_);
  // Restores journaled records; appends to `deletes` those out of the window
  // or over a budget.
  void Restore(std::vector<RequestState> records,
               std::vector<std::pair<std::string, std::string>>* deletes) ABSL_LOCKS_EXCLUDED(mu_);

  // Every remembered record (for a fresh journal's first commit and tests).
  std::vector<RequestState> Records() const ABSL_LOCKS_EXCLUDED(mu_);
  size_t size() const ABSL_LOCKS_EXCLUDED(mu_);
  // Calls answered with a recorded reply.
  uint64_t replays() const { return replays_.load(std::memory_order_relaxed); }
  const RequestLogOptions& options() const { return options_; }

 private:
  struct Entry {
    uint64_t fingerprint = 0;
    std::string reply;
    absl::Time recorded;
  };
  // One principal's records, oldest first.
  struct Principal {
    std::deque<std::pair<std::string, absl::Time>> order;  // (id, recorded)
    size_t bytes = 0;
  };
  static std::string Key(absl::string_view principal, absl::string_view id);
  void InsertLocked(const RequestState& state,
                    std::vector<std::pair<std::string, std::string>>* deletes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RequestLogOptions options_;
  std::atomic<uint64_t> replays_{0};
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> done_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Principal> principals_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint64_t> in_flight_ ABSL_GUARDED_BY(mu_);  // key -> fingerprint
  absl::CondVar finished_;  // signalled when a call in flight ends
};

class RequestScope;
namespace internal {
// The request this thread's broker call runs under (nullptr: none).
inline thread_local RequestScope* pending_request = nullptr;
}  // namespace internal

// One mutating call under a request id, on the thread that runs it. The
// broker captures the call's result through it (its encoder turns a result
// into the reply bytes, e.g. the RPC's response message) and journals the
// record in the call's last commit.
class RequestScope {
 public:
  // Encodes a result of the call's type: `result` points at a T, `type` is
  // typeid(T) (absl::Status for calls that return no value).
  using Encoder = std::function<std::string(const void* result, const std::type_info& type)>;

  RequestScope(RequestLog& log, RequestState key, Encoder encoder)
      : log_(log), record_(std::move(key)), encoder_(std::move(encoder)) {}
  RequestScope(const RequestScope&) = delete;
  RequestScope& operator=(const RequestScope&) = delete;
  ~RequestScope();

  // See RequestLog::Begin. When it returns nullopt this thread's broker
  // calls run under this scope until it is destroyed.
  absl::StatusOr<std::optional<std::string>> Begin(absl::Time deadline);

  // The broker's success result (see BrokerImpl::DurableReply::Reply).
  template <typename T>
  void Capture(const T& result) {
    record_.reply = encoder_(&result, typeid(T));
    captured_ = true;
  }
  // At a commit: the captured reply joins `changes`, once.
  void JoinCommit(StateChanges& changes) {
    if (!captured_ || journaled_) return;
    record_.recorded = log_.options().now();
    log_.Record(record_, &changes.request_deletes);
    changes.request_put = &record_;
    journaled_ = true;
  }
  // Captured but no commit followed (the call changed nothing).
  bool unjournaled() const { return captured_ && !journaled_; }
  const RequestState& record() const { return record_; }

 private:
  RequestLog& log_;
  RequestState record_;
  Encoder encoder_;
  bool begun_ = false;
  bool captured_ = false;
  bool journaled_ = false;
  RequestScope* outer_ = nullptr;
};

namespace internal {
// Captures a successful result as the reply of this thread's request (none:
// nothing). An operation captures at its point of no return, before its
// last commit, so that the reply joins that commit.
template <typename T>
void CaptureReply(const T& result) {
  if (pending_request != nullptr) pending_request->Capture(result);
}
inline void CaptureOk() { CaptureReply(absl::OkStatus()); }

// Within its scope this thread's broker steps capture no reply: for an
// operation's inner steps that are whole operations of their own (a
// session's release destroying its domains).
class WithoutReply {
 public:
  WithoutReply() : saved_(pending_request) { pending_request = nullptr; }
  ~WithoutReply() { pending_request = saved_; }
  WithoutReply(const WithoutReply&) = delete;
  WithoutReply& operator=(const WithoutReply&) = delete;

 private:
  RequestScope* const saved_;
};

// Called at each commit point of a broker operation (domain transaction,
// buffer table, registry) with the change set about to be journaled.
inline void JoinPendingRequest(StateChanges& changes) {
  if (pending_request != nullptr) pending_request->JoinCommit(changes);
}
}  // namespace internal

}  // namespace iommu::core

#endif  // IOMMU_CORE_BROKER_REQUEST_LOG_H_
