// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_BATCH_REACTOR_H_
#define IOMMU_SERVER_BATCH_REACTOR_H_

// Dma.Batch: a bidirectional stream of BatchRequests, each carrying many
// Map/Unmap/MapSg/UnmapSg/Translate operations, applied in order; one
// BatchResponse per request with one result (code, message, payload) per
// operation. A failing operation does not stop the ones after it.
//
// The identity is authenticated once, when the stream opens; every operation
// then acts as its own `device` (else the message's `device`) under the same
// rules as the unary RPCs.
// Consecutive Map/Unmap ops naming the same device are applied as one run
// (core::Broker::MapUnmapBatch: one device lookup and domain-lock hold, the
// strict invalidations of its unmaps done together), each op still getting
// the result it would get alone.
// The reactor reads one request, processes it inline on the callback thread
// (core calls never block), writes the response, then reads the next: a
// client pipelines by keeping several requests in flight.
//
// Limits (docs/design.md#limits). Messages arrive as bytes. Each is scanned
// against the limits before it is parsed (RequestScanner): its operations,
// a MapSg counting one more per segment, at most --max_batch_ops, which
// bounds both its parsed size and its response (ValidateLimits: the
// response to that many operations fits in --max_message_bytes); every
// string at most --max_string_bytes. A message beyond a limit, or one that
// is not a BatchRequest, ends the stream (RESOURCE_EXHAUSTED or
// INVALID_ARGUMENT naming the message, the limit and its value) with
// nothing of it applied; the messages answered before it stand. The stream
// holds one of its device's --max_streams_per_device slots (StreamLimiter):
// from its start for a device credential, else from its first message,
// which names the device it acts as.
//
// Memory: the request and its response live on one protobuf arena, reset
// between messages (exactly one is in flight: read, process, write, read).
// Its first block is owned by the reactor, allocated at the first message,
// and grows to the largest message pair seen up to kMaxArenaBlockBytes; a
// larger pair takes blocks of its own, returned when the arena is reset. So
// a steady stream parses and builds its messages without a heap allocation
// per operation, an idle stream holds at most kMaxArenaBlockBytes, and the
// bytes of a message are dropped once parsed and of a response once written.
//
// Metrics: started and handled once per stream, received/sent per message.
// On drain the stream ends with UNAVAILABLE between two requests.
//
// Thread-safety: gRPC serialises OnReadDone/OnWriteDone of one stream; mu_
// guards the state Drain() shares with them. No gRPC call is made with mu_
// held (gRPC may run a reaction inline): each step decides under mu_ and acts
// after releasing it.

#include <google/protobuf/arena.h>
#include <grpcpp/support/server_callback.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "core/broker/broker_types.h"
#include "iommu/v1/dma.pb.h"
#include "server/rpc_call.h"

namespace iommu::server {

class BatchReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                           public DrainableStream {
 public:
  BatchReactor(const ServiceEnv& env, grpc::CallbackServerContext* context);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnDone() override;
  void Drain() override;

 private:
  static constexpr size_t kMinArenaBlockBytes = size_t{64} << 10;
  static constexpr size_t kMaxArenaBlockBytes = size_t{1} << 20;
  // The blocks an arena takes beyond its first grow up to this size.
  static constexpr size_t kMaxExtraBlockBytes = size_t{1} << 20;

  // Drops the previous message pair and starts empty request_ and response_
  // on a fresh arena, first growing its block if the last pair outgrew it.
  // REQUIRES: no read or write in progress.
  void ResetArena();
  // Checks in_ against the limits, parses it into request_ and takes the
  // stream's device slot if it has none; the error that ends the stream
  // otherwise. Drops in_.
  absl::Status Accept();
  // Applies every op of *request_ into *response_.
  void Process();
  // Applies one MapSg, UnmapSg or Translate op (Map and Unmap go in runs).
  void RunOp(const v1::BatchOp& op, v1::BatchResult* result);
  // The device an op of *request_ acts as: its own, else the message's.
  const std::string& OpDevice(const std::string& own) const {
    return own.empty() ? request_->device() : own;
  }
  // Applies ops [begin, end) of *request_, consecutive Map/Unmap ops naming
  // the same device, through one Broker::MapUnmapBatch; each gets the result
  // RunOp would have given it.
  void RunMapUnmapRun(int begin, int end);
  static void SetError(const absl::Status& status, v1::BatchResult* result);
  static void AppendResultField(const v1::BatchResult& result, std::string* out);
  // A message with a request id runs each core call (a run, a MapSg, an
  // UnmapSg) exactly once under the sub-id "<id>#<k>", k counting its core
  // calls in order (docs/design.md#request-ids).
  core::RequestState SubRequest(const core::Caller& caller, int k) const;
  template <typename Result, typename Call, typename Fill>
  absl::Status RunOnce(const core::Caller& caller, v1::BatchResult* result, Call&& call,
                       Fill&& fill);
  // Marks the stream finished with `status` unless it already is; true when
  // the caller must now call Finish(status).
  bool MarkFinishedLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishWith(const absl::Status& status) ABSL_LOCKS_EXCLUDED(mu_);

  const ServiceEnv env_;
  const int64_t start_ns_;
  Identity identity_;
  uint64_t session_id_ = 0;
  bool registered_ = false;
  // Declared before arena_, which allocates from it (destroyed after it).
  std::unique_ptr<char[]> arena_block_;
  size_t arena_block_bytes_ = 0;
  std::optional<google::protobuf::Arena> arena_;
  v1::BatchRequest* request_ = nullptr;    // on arena_
  v1::BatchResponse* response_ = nullptr;  // on arena_
  grpc::ByteBuffer in_;                    // the message being read, until parsed
  grpc::ByteBuffer out_;                   // the response being written
  uint64_t messages_ = 0;                  // read so far, this one included
  bool counted_ = false;                   // a device slot was taken (slot_)
  std::string device_;                     // the stream acts as (its slot's), for the log
  // Scratch of RunMapUnmapRun, kept to reuse its capacity.
  std::vector<core::DmaBatchOp> run_ops_;
  std::vector<core::DmaBatchResult> run_results_;
  std::vector<int> run_index_;  // op index in *request_ of each run_ops_ entry
  int next_call_ = 0;           // the next core call's k in this message
  uint64_t fingerprint_ = 0;    // of this message's device and ops
  std::string scratch_;         // its bytes, reused

  absl::Mutex mu_;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // The device slot the stream holds; returned as the stream finishes, before
  // its client can see the end (so the client may open another at once).
  StreamSlot slot_ ABSL_GUARDED_BY(mu_);
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_BATCH_REACTOR_H_
