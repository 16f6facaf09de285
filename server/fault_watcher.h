#ifndef IOMMU_SERVER_FAULT_WATCHER_H_
#define IOMMU_SERVER_FAULT_WATCHER_H_

// Devices.WatchFaults: a server stream of FaultEvents, each carrying the
// fault records newer than the last one sent (a device sees its own, an
// admin all) and the count of records this watcher lost to ring overwrites.
//
// One thread per watcher waits on Broker::WaitForFaults (bounded waits of
// 250 ms, so cancellation and drain are noticed promptly), reads with
// Broker::ReadFaults and writes one event at a time. The stream ends with OK
// when the daemon drains, CANCELLED when the client goes away.
//
// Limits: the request arrives as bytes and is parsed after the limits'
// checks (ParseRequest); the stream takes one of its device's
// --max_streams_per_device slots (StreamLimiter) for its lifetime, so the
// watcher threads are bounded per device.
//
// Thread-safety: mu_ guards the state shared between the watcher thread and
// the gRPC reactions; only the watcher thread calls StartWrite and Finish.

#include <grpcpp/support/server_callback.h>

#include <thread>

#include "absl/synchronization/mutex.h"
#include "iommu/v1/device.pb.h"
#include "server/rpc_call.h"

namespace iommu::server {

class FaultWatcher final : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
                           public DrainableStream {
 public:
  FaultWatcher(const ServiceEnv& env, grpc::CallbackServerContext* context,
               const grpc::ByteBuffer& request_bytes);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;
  void Drain() override;

 private:
  void Run(core::Caller caller, uint64_t after_seq);
  bool WriteDoneLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !write_pending_; }
  bool StopRequested() ABSL_LOCKS_EXCLUDED(mu_);
  // Writes event_ and waits for its completion; false when the client left.
  bool WriteAndWait() ABSL_LOCKS_EXCLUDED(mu_);

  const ServiceEnv env_;
  const int64_t start_ns_;
  std::string device_;
  bool registered_ = false;
  v1::FaultEvent event_;
  grpc::ByteBuffer event_bytes_;  // event_, serialized for the write in progress
  StreamSlot slot_;               // returned before Finish, by whichever thread calls it
  std::thread thread_;

  absl::Mutex mu_;
  bool write_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool write_ok_ ABSL_GUARDED_BY(mu_) = true;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_FAULT_WATCHER_H_
