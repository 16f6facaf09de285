// SPDX-License-Identifier: Apache-2.0
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
// matched to requests by sequence number, in order.
//
// A daemon restart does not break the stream. Each message carries a fresh
// request id (BatchRequest.request_id, client/request_id.h) and is kept
// until its response arrives. When the stream ends with UNAVAILABLE, it is
// reopened (with the backoff of Options::retry, for up to
// Options::default_deadline from the break) and the unanswered messages are
// written again, in order, with their sequences and ids: the daemon answers
// one it applied before the restart with its original response, so every
// future completes with the result of exactly one application. Any other
// error, or no daemon within that time, fails every outstanding and later
// future; Close() returns the stream's final status.
//
// Each message lives on its own protobuf arena. AddMap/AddUnmap/AddTranslate
// build their operation in place, so queueing costs no heap allocation per
// operation (Add() copies). Once a message is answered its operations are
// kept for a later one: the BatchOps (cleared) and their
// Map/Unmap/Translate requests (in per-kind free lists, rewritten whole when
// reused), so steady queueing allocates nothing, not even on the arena. A
// message that had an Add()ed operation resets its arena instead, as does a
// free list grown past kMaxSpare entries. The stream holds one message per
// message in flight, plus the pending one (and keeps up to
// kMaxAnsweredMessages answered ones for reuse). Each response is parsed
// onto an arena its BatchReply owns.
//
// Thread-compatible: one thread queues, sends and closes. Inside, a reader
// thread completes the futures and reopens the stream, and after a reopen a
// short-lived thread writes the unanswered messages again.
#ifndef IOMMU_CLIENT_BATCH_H_
#define IOMMU_CLIENT_BATCH_H_

#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <thread>
#include <utility>
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
  // Operations queued in the pending message.
  size_t pending() const;

  // Sends the pending operations as one message (an empty one too). A
  // message the daemon would refuse whole (more than limits.max_batch_ops
  // operations, a MapSg counting one more per segment, or more than
  // limits.max_message_bytes) is not sent: its future holds
  // RESOURCE_EXHAUSTED naming the limit, its operations are dropped, and the
  // stream stays usable.
  ResponseFuture Send();
  absl::StatusOr<BatchReply> Flush() { return Send().get(); }

  // Half-closes, waits for outstanding responses (through a reopen after a
  // daemon restart) and returns the stream's status: OK when every message
  // sent was answered, even if the stream broke after the last answer and
  // was not reopened. Idempotent.
  absl::Status Close();

 private:
  using Stream = grpc::ClientReaderWriter<v1::BatchRequest, v1::BatchResponse>;
  // One message and the arena it is built on (batch.cc).
  struct Message;
  struct Outstanding {
    uint64_t sequence;
    std::promise<absl::StatusOr<BatchReply>> promise;
    std::unique_ptr<Message> message;  // kept whole to be written again after a reopen
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
  // The device an op must name itself: empty when it is the client's, which
  // the message names once (BatchRequest.device) for every op.
  absl::string_view OwnDevice(absl::string_view device) const {
    return device == client_.device() ? absl::string_view() : device;
  }

  // OK, or why the daemon would refuse the pending message (see Send).
  absl::Status CheckPending() const;
  // Starts a Batch call and makes it stream_ (not yet live_); returns it
  // and its context, which only the reader thread replaces.
  std::pair<Stream*, grpc::ClientContext*> OpenStream() ABSL_LOCKS_EXCLUDED(write_mu_);
  void ReadLoop(Stream* stream, grpc::ClientContext* context);
  // Completes the futures of the responses on `stream` until it ends; true
  // if any arrived.
  bool ReadResponses(Stream* stream, grpc::ClientContext* context);
  // After the stream ended with `ended` (UNAVAILABLE), the `opens`-th
  // stream since the last response: waits `backoff`, then for the channel
  // to connect, by `give_up`. False when the stream is not to be reopened:
  // StopReopening(), or (setting broken_) the attempts or the time ran out.
  bool AwaitReopen(const grpc::Status& ended, int opens, absl::Duration backoff,
                   absl::Time give_up);
  bool StopReopening() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return !broken_.ok() || (closing_ && outstanding_.empty());
  }
  // Writes the outstanding messages on the new stream_, in order, then
  // makes it live_ (and half-closes it after Close()).
  void Resend();
  void FailOutstanding(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Client client_;
  // The sending thread's: the message being queued (never null), and the
  // sequence of the next.
  std::unique_ptr<Message> pending_;
  static constexpr size_t kMaxSpare = size_t{1} << 16;
  static constexpr size_t kMaxAnsweredMessages = 64;
  uint64_t next_sequence_ = 1;
  std::thread reader_;
  // The reader's: the thread of the last Resend(), and the stream's final
  // status, written before the reader ends (Close() reads it after join).
  std::thread resender_;
  absl::Status final_status_;

  // Lock order: write_mu_ before mu_. write_mu_ keeps Write order equal to
  // the order of `outstanding_`.
  absl::Mutex write_mu_;
  std::unique_ptr<grpc::ClientContext> context_ ABSL_GUARDED_BY(write_mu_);
  std::unique_ptr<Stream> stream_ ABSL_GUARDED_BY(write_mu_);
  // Send() writes to stream_: false from the end of a stream until the
  // next one has had the outstanding messages written (Resend()).
  bool live_ ABSL_GUARDED_BY(write_mu_) = false;
  absl::Mutex mu_;
  std::deque<Outstanding> outstanding_ ABSL_GUARDED_BY(mu_);
  // Messages whose responses arrived, for Send() to reuse.
  std::vector<std::unique_ptr<Message>> answered_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;  // Close() was called
  absl::Status broken_ ABSL_GUARDED_BY(mu_);   // non-OK once the stream cannot deliver
};

}  // namespace iommu::client

#endif  // IOMMU_CLIENT_BATCH_H_
