// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_FAULT_WATCHER_H_
#define IOMMU_SERVER_FAULT_WATCHER_H_

// Devices.WatchFaults: a server stream of FaultEvents, each carrying the
// fault records newer than the last one sent (a device sees its own, an
// admin all) and the count of records this watcher lost to ring overwrites.
//
// A callback reactor with no thread of its own (docs/design.md#watch-faults).
// It reads with Broker::ReadFaults and writes one event at a time, reading
// again as each write completes; when it has sent everything it arms itself
// with the FaultDispatcher, whose one thread wakes it when the ring gains a
// record for its device. So an idle watcher costs memory, never a thread or
// a wake-up of its own. On start it sends at once what the ring holds past
// after_seq (with the count lost before it), else nothing until a record
// arrives. The stream ends with OK when the daemon drains (after a write in
// flight completes), CANCELLED when the client goes away.
//
// Limits: the request arrives as bytes and is parsed after the limits'
// checks (ParseRequest); the stream takes one of its device's
// --max_watchers_per_device slots and one of its --max_streams_per_device
// slots for its lifetime, refused RESOURCE_EXHAUSTED naming the flag before
// anything is read.
//
// Thread-safety: Pump runs on whichever thread started the step (gRPC's for
// the start and OnWriteDone, the dispatcher's for a wake); mu_ guards what
// they share with OnCancel and Drain. At most one write is in flight
// (writing_), and no gRPC call is made with mu_ held (gRPC may run a
// reaction inline): each step decides under mu_ and acts after releasing it.

#include <grpcpp/support/server_callback.h>

#include <optional>
#include <string>

#include "absl/synchronization/mutex.h"
#include "iommu/v1/device.pb.h"
#include "server/fault_dispatcher.h"
#include "server/rpc_call.h"

namespace iommu::server {

class FaultWatcher final : public grpc::ServerWriteReactor<grpc::ByteBuffer>, public FaultWaiter {
 public:
  FaultWatcher(const ServiceEnv& env, grpc::CallbackServerContext* context,
               const grpc::ByteBuffer& request_bytes);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;
  void Drain() override;
  void Wake() override;

 private:
  static constexpr size_t kMaxRecordsPerEvent = 256;

  // Starts the write of what is new past after_seq_, or arms the stream when
  // there is nothing, or finishes it when it should end. Does nothing while
  // a write is in flight or once finished.
  void Pump() ABSL_LOCKS_EXCLUDED(mu_);
  // Marks the stream finished with `status` (disarmed, its slots returned
  // before the client can see the end) unless it already is; true when the
  // caller must now call Finish(status). REQUIRES: no write in flight.
  bool MarkFinishedLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ServiceEnv env_;
  const int64_t start_ns_;
  std::string device_;                  // for the log
  std::string key_;                     // the dispatcher's: the caller's device, "" for the admin
  std::optional<core::Caller> caller_;  // set once the stream is accepted
  bool registered_ = false;

  absl::Mutex mu_;
  uint64_t after_seq_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;  // event_bytes_ is being written
  bool armed_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
  v1::FaultEvent event_ ABSL_GUARDED_BY(mu_);
  // event_, serialized for the write in flight (gRPC reads it until
  // OnWriteDone, which empties it).
  grpc::ByteBuffer event_bytes_;
  // Held for the stream's lifetime; returned as it finishes.
  StreamSlot slot_ ABSL_GUARDED_BY(mu_);
  StreamSlot watcher_slot_ ABSL_GUARDED_BY(mu_);
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_FAULT_WATCHER_H_
