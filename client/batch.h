// The Batch bidirectional stream: many Map/Unmap/MapSg/UnmapSg/Translate
// operations per message, a virtio-iommu request queue.
//
//   ASSIGN_OR_RETURN(auto batch, BatchStream::Open(client));
//   batch->AddMap(buffer_id, 0, 4096, v1::DMA_DIRECTION_TO_DEVICE);   // index 0
//   batch->AddTranslate(iova, 4096, v1::ACCESS_KIND_READ);            // index 1
//   ASSIGN_OR_RETURN(v1::BatchResponse r, batch->Flush());           // results[0], results[1]
//
// Add*() queue operations into the pending message and return their index in
// it; Send() writes the pending message and returns a future of its
// response, whose results are in operation order (BatchResultStatus gives
// each one's status). Several messages may be in flight: responses are
// matched to requests by sequence number, in order. If the stream breaks,
// every outstanding and later future yields the error; Close() returns the
// stream's final status.
//
// The pending message lives on a protobuf arena. AddMap/AddUnmap/AddTranslate
// build their operation in place, so queueing costs no heap allocation per
// operation (Add() copies). Once a message is written its operations are
// kept for the next one: the BatchOps (cleared) and their Map/Unmap/Translate
// requests (in per-kind free lists, rewritten whole when reused), so steady
// queueing allocates nothing, not even on the arena. A message that had an
// Add()ed operation resets the arena instead, as does a free list grown past
// kMaxSpare entries. Each response is parsed onto an arena its BatchReply
// owns.
//
// Thread-compatible: one thread queues and sends; a reader thread inside
// completes the futures.
#ifndef IOMMU_CLIENT_BATCH_H_
#define IOMMU_CLIENT_BATCH_H_

#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "client/status.h"  // BatchResultStatus
#include "google/protobuf/arena.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/sync_stream.h"

namespace iommu::client {

// One BatchResponse, parsed onto its own protobuf arena (no heap allocation
// per result; freed at once). Move-only; reads like the message.
class BatchReply {
 public:
  BatchReply(std::unique_ptr<google::protobuf::Arena> arena, v1::BatchResponse* message)
      : arena_(std::move(arena)), message_(message) {}
  BatchReply(BatchReply&&) = default;
  BatchReply& operator=(BatchReply&&) = default;

  const v1::BatchResponse& message() const { return *message_; }
  uint64_t sequence() const { return message_->sequence(); }
  int results_size() const { return message_->results_size(); }
  const v1::BatchResult& results(int i) const { return message_->results(i); }
  const google::protobuf::RepeatedPtrField<v1::BatchResult>& results() const {
    return message_->results();
  }

 private:
  std::unique_ptr<google::protobuf::Arena> arena_;
  v1::BatchResponse* message_;  // on arena_
};

class BatchStream {
 public:
  using ResponseFuture = std::future<absl::StatusOr<BatchReply>>;

  static absl::StatusOr<std::unique_ptr<BatchStream>> Open(const Client& client);
  BatchStream(const BatchStream&) = delete;
  BatchStream& operator=(const BatchStream&) = delete;
  ~BatchStream();

  // Queue one operation; the device of its request defaults to the client's
  // (`device`, when given, names it instead). The client's device is sent
  // once per message (BatchRequest.device), not per operation.
  size_t Add(v1::BatchOp op);
  size_t AddMap(uint64_t buffer_id, uint64_t offset_bytes, uint64_t length_bytes,
                v1::DmaDirection direction, absl::string_view device = {});
  size_t AddUnmap(uint64_t dma_addr, absl::string_view device = {});
  size_t AddTranslate(uint64_t iova, uint64_t length_bytes, v1::AccessKind access,
                      absl::string_view device = {});
  size_t pending() const { return static_cast<size_t>(pending_->ops_size()); }

  // Sends the pending operations as one message (an empty one too).
  ResponseFuture Send();
  absl::StatusOr<BatchReply> Flush() { return Send().get(); }

  // Half-closes, waits for outstanding responses and returns the stream's
  // status. Idempotent.
  absl::Status Close();

 private:
  struct Outstanding {
    uint64_t sequence;
    std::promise<absl::StatusOr<BatchReply>> promise;
  };

  explicit BatchStream(Client client);
  // A new operation at the end of the pending message, and the device its
  // request names.
  v1::BatchOp* NewOp();
  // The Map/Unmap/Translate request of a new operation: a kept one rewritten
  // to its defaults, else a new one on the arena.
  v1::MapRequest* NewMap();
  v1::UnmapRequest* NewUnmap();
  v1::TranslateOp* NewTranslate();
  // After a Write: empties the pending message, keeping its operations for
  // the next one (or resetting the arena; see the file comment).
  void RecyclePending();
  // The device an op must name itself: empty when it is the client's, which
  // the message names once (BatchRequest.device) for every op.
  absl::string_view OwnDevice(absl::string_view device) const {
    return device == client_.device() ? absl::string_view() : device;
  }
  void ReadLoop();
  void FailOutstanding(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Client client_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::BatchRequest, v1::BatchResponse>> stream_;
  // Owned by the sending thread: the pending message, on pending_arena_.
  google::protobuf::Arena pending_arena_;
  v1::BatchRequest* pending_;
  // Requests of written operations, on pending_arena_, for reuse.
  static constexpr size_t kMaxSpare = size_t{1} << 16;
  std::vector<v1::MapRequest*> spare_maps_;
  std::vector<v1::UnmapRequest*> spare_unmaps_;
  std::vector<v1::TranslateOp*> spare_translates_;
  bool pending_has_copies_ = false;  // an Add()ed op: reset the arena after
  uint64_t next_sequence_ = 1;
  bool closed_ = false;
  absl::Status final_status_;
  std::thread reader_;

  // Lock order: write_mu_ before mu_. write_mu_ keeps Write order equal to
  // the order of `outstanding_`.
  absl::Mutex write_mu_;
  absl::Mutex mu_;
  std::deque<Outstanding> outstanding_ ABSL_GUARDED_BY(mu_);
  absl::Status broken_ ABSL_GUARDED_BY(mu_);  // non-OK once the stream cannot deliver
};

}  // namespace iommu::client

#endif  // IOMMU_CLIENT_BATCH_H_
