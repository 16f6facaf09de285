// SPDX-License-Identifier: Apache-2.0
#include "server/fault_watcher.h"

#include "server/proto_convert.h"

namespace iommu::server {

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
  absl::Status accepted = caller.status();
  if (accepted.ok()) {
    // The limits, before anything is read: watchers, then streams.
    absl::MutexLock l(&mu_);
    accepted = AcquireSlot(env_.watcher_limiter, caller->device, &watcher_slot_);
    if (accepted.ok()) accepted = AcquireSlot(env_.stream_limiter, caller->device, &slot_);
  }
  if (accepted.ok()) {
    // Set before a drain can reach the stream.
    device_ = caller->device;
    key_ = caller->admin ? "" : caller->device;
    caller_ = *std::move(caller);
    {
      absl::MutexLock l(&mu_);
      after_seq_ = request.after_seq();
    }
    registered_ = env_.streams->Add(this);
    if (!registered_) accepted = absl::UnavailableError("iommud is shutting down");
  }
  if (!accepted.ok()) {
    {
      absl::MutexLock l(&mu_);
      MarkFinishedLocked(accepted);
    }
    Finish(ToGrpcStatus(accepted));
    return;
  }
  Pump();
}

bool FaultWatcher::MarkFinishedLocked(const absl::Status& status) {
  if (finished_) return false;
  finished_ = true;
  final_status_ = status;
  if (armed_) {
    env_.faults->Disarm(this, key_);
    armed_ = false;
  }
  // Before the client can see the end, so that it may open another at once.
  slot_.Reset();
  watcher_slot_.Reset();
  return true;
}

void FaultWatcher::Pump() {
  absl::Status end;
  bool finish = false;
  bool write = false;
  {
    absl::MutexLock l(&mu_);
    if (finished_ || writing_) return;
    if (cancelled_) {
      finish = MarkFinishedLocked(absl::CancelledError("the client went away"));
    } else if (draining_) {
      finish = MarkFinishedLocked(absl::OkStatus());
    } else {
      while (true) {
        absl::StatusOr<core::FaultReadResult> read =
            env_.broker->ReadFaults(*caller_, after_seq_, kMaxRecordsPerEvent);
        if (!read.ok()) {
          finish = MarkFinishedLocked(read.status());
          break;
        }
        const bool advanced = read->next_after_seq != after_seq_;
        after_seq_ = read->next_after_seq;
        if (!read->records.empty() || read->lost != 0) {
          event_.Clear();
          for (const core::FaultRecord& r : read->records) ToProto(r, event_.add_records());
          event_.set_lost(read->lost);
          if (absl::Status s = SerializeReply(env_, Method::kWatchFaults, event_, &event_bytes_);
              !s.ok()) {
            finish = MarkFinishedLocked(s);
            break;
          }
          writing_ = true;
          write = true;
          break;
        }
        // Only other devices' records were past after_seq: read on.
        if (advanced) continue;
        // Everything is sent. A record dispatched since the read is read
        // now; any later one wakes the stream.
        if (env_.faults->Arm(this, key_, after_seq_)) {
          armed_ = true;
          break;
        }
      }
    }
    if (finish) end = final_status_;
  }
  if (write) {
    env_.metrics->Sent(Method::kWatchFaults);
    StartWrite(&event_bytes_);
  }
  // Nothing of `this` is touched after Finish: OnDone may run at once.
  if (finish) Finish(ToGrpcStatus(end));
}

void FaultWatcher::Wake() {
  {
    absl::MutexLock l(&mu_);
    armed_ = false;  // the dispatcher took it
  }
  Pump();
}

void FaultWatcher::OnWriteDone(bool ok) {
  // gRPC is done with the event's bytes: an idle watcher keeps none.
  event_bytes_.Clear();
  {
    absl::MutexLock l(&mu_);
    writing_ = false;
    if (!ok) cancelled_ = true;
  }
  Pump();
}

void FaultWatcher::OnCancel() {
  {
    absl::MutexLock l(&mu_);
    cancelled_ = true;
  }
  // A write in flight completes (not ok), and its OnWriteDone ends the stream.
  Pump();
}

void FaultWatcher::Drain() {
  {
    absl::MutexLock l(&mu_);
    draining_ = true;
  }
  Pump();
}

void FaultWatcher::OnDone() {
  if (registered_) env_.streams->Remove(this);
  absl::Status status;
  {
    absl::MutexLock l(&mu_);
    status = final_status_;
    if (armed_) env_.faults->Disarm(this, key_);
    armed_ = false;
  }
  const int64_t elapsed_ns = MonotonicNanos() - start_ns_;
  env_.metrics->Handled(Method::kWatchFaults, status.code(), elapsed_ns);
  LogCall("iommu.v1.Devices", "WatchFaults", device_, status, elapsed_ns);
  Unpin();
}

}  // namespace iommu::server
