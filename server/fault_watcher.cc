#include "server/fault_watcher.h"

#include "server/proto_convert.h"

namespace iommu::server {
namespace {

constexpr absl::Duration kWaitSlice = absl::Milliseconds(250);
constexpr size_t kMaxRecordsPerEvent = 256;

}  // namespace

FaultWatcher::FaultWatcher(const ServiceEnv& env, grpc::CallbackServerContext* context,
                           const grpc::ByteBuffer& request_bytes)
    : env_(env), start_ns_(MonotonicNanos()) {
  env_.metrics->Started(Method::kWatchFaults);
  env_.metrics->Received(Method::kWatchFaults);
  v1::WatchFaultsRequest request;
  const absl::Status parsed = ParseRequest(env_, Method::kWatchFaults, request_bytes, &request);
  device_ = request.device();
  absl::StatusOr<core::Caller> caller =
      parsed.ok() ? ResolveCaller(env_, *context, request.device()) : parsed;
  // An unknown device is NOT_FOUND, as for every other RPC; ReadFaults checks
  // the caller's device itself.
  if (caller.ok()) {
    absl::StatusOr<core::FaultReadResult> probe =
        env_.broker->ReadFaults(*caller, request.after_seq(), 1);
    if (!probe.ok()) caller = probe.status();
  }
  if (caller.ok()) {
    if (absl::Status s = AcquireSlot(env_.stream_limiter, caller->device, &slot_); !s.ok()) {
      caller = s;
    }
  }
  if (caller.ok()) registered_ = env_.streams->Add(this);
  if (!caller.ok() || !registered_) {
    const absl::Status status =
        caller.ok() ? absl::UnavailableError("iommud is shutting down") : caller.status();
    {
      absl::MutexLock l(&mu_);
      final_status_ = status;
    }
    slot_.Reset();
    Finish(ToGrpcStatus(status));
    return;
  }
  device_ = caller->device;
  thread_ = std::thread(&FaultWatcher::Run, this, *caller, request.after_seq());
}

bool FaultWatcher::StopRequested() {
  absl::MutexLock l(&mu_);
  return cancelled_ || draining_;
}

bool FaultWatcher::WriteAndWait() {
  {
    absl::MutexLock l(&mu_);
    write_pending_ = true;
  }
  if (absl::Status s = SerializeReply(env_, Method::kWatchFaults, event_, &event_bytes_); !s.ok()) {
    absl::MutexLock l(&mu_);
    write_pending_ = false;
    return false;
  }
  env_.metrics->Sent(Method::kWatchFaults);
  StartWrite(&event_bytes_);
  absl::MutexLock l(&mu_);
  mu_.Await(absl::Condition(this, &FaultWatcher::WriteDoneLocked));
  return write_ok_;
}

void FaultWatcher::Run(core::Caller caller, uint64_t after_seq) {
  absl::Status status;
  while (true) {
    if (StopRequested()) break;
    absl::StatusOr<core::FaultReadResult> read =
        env_.broker->ReadFaults(caller, after_seq, kMaxRecordsPerEvent);
    if (!read.ok()) {
      status = read.status();
      break;
    }
    after_seq = read->next_after_seq;
    if (!read->records.empty() || read->lost != 0) {
      event_.Clear();
      for (const core::FaultRecord& r : read->records) ToProto(r, event_.add_records());
      event_.set_lost(read->lost);
      if (!WriteAndWait()) {
        status = absl::CancelledError("the client went away");
        break;
      }
      continue;
    }
    const absl::Status waited = env_.broker->WaitForFaults(after_seq, absl::Now() + kWaitSlice);
    if (absl::IsCancelled(waited)) break;  // the broker shut down: the daemon drains
  }
  {
    absl::MutexLock l(&mu_);
    if (cancelled_ && status.ok()) status = absl::CancelledError("the client went away");
    final_status_ = status;
  }
  slot_.Reset();  // before the client can see the end
  // Nothing of `this` is touched after Finish: OnDone may run at once.
  Finish(ToGrpcStatus(status));
}

void FaultWatcher::OnWriteDone(bool ok) {
  absl::MutexLock l(&mu_);
  write_pending_ = false;
  write_ok_ = ok;
}

void FaultWatcher::OnCancel() {
  absl::MutexLock l(&mu_);
  cancelled_ = true;
  // A write may never complete now; release the thread.
  write_pending_ = false;
  write_ok_ = false;
}

void FaultWatcher::Drain() {
  absl::MutexLock l(&mu_);
  draining_ = true;
}

void FaultWatcher::OnDone() {
  // Finish may run OnDone inline on the watcher thread itself, which then
  // touches nothing of `this` after Finish returns.
  if (thread_.joinable()) {
    if (thread_.get_id() == std::this_thread::get_id()) {
      thread_.detach();
    } else {
      thread_.join();
    }
  }
  if (registered_) env_.streams->Remove(this);
  absl::Status status;
  {
    absl::MutexLock l(&mu_);
    status = final_status_;
  }
  const int64_t elapsed_ns = MonotonicNanos() - start_ns_;
  env_.metrics->Handled(Method::kWatchFaults, status.code(), elapsed_ns);
  LogCall("iommu.v1.Devices", "WatchFaults", device_, status, elapsed_ns);
  Unpin();
}

}  // namespace iommu::server
