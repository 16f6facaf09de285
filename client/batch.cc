// SPDX-License-Identifier: Apache-2.0
#include "client/batch.h"

#include <algorithm>
#include <cassert>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/connection.h"
#include "client/request_id.h"
#include "client/status.h"

namespace iommu::client {
namespace {

template <typename Req>
void FillDevice(Req* request, const std::string& device) {
  if (request->device().empty()) request->set_device(device);
}

google::protobuf::ArenaOptions PendingArenaOptions() {
  google::protobuf::ArenaOptions options;
  options.start_block_size = size_t{64} << 10;
  options.max_block_size = size_t{1} << 20;
  return options;
}

constexpr absl::Duration kReopenPoll = absl::Milliseconds(100);

}  // namespace

// Invariant: `request` is on `arena`; every request in the spare lists is on
// `arena`, owned by no op, and was built by AddMap/AddUnmap/AddTranslate.
struct BatchStream::Message {
  Message()
      : arena(PendingArenaOptions()),
        request(google::protobuf::Arena::CreateMessage<v1::BatchRequest>(&arena)) {}

  // Empties the message for the next one, keeping its operations (or
  // resetting the arena; see the file comment). Sequence, device and
  // request id are rewritten by every Send().
  void Recycle();

  google::protobuf::Arena arena;
  v1::BatchRequest* request;
  std::vector<v1::MapRequest*> spare_maps;
  std::vector<v1::UnmapRequest*> spare_unmaps;
  std::vector<v1::TranslateOp*> spare_translates;
  bool has_copies = false;  // an Add()ed op: reset the arena after
};

void BatchStream::Message::Recycle() {
  const bool reset = has_copies || spare_maps.size() + spare_unmaps.size() +
                                           spare_translates.size() +
                                           static_cast<size_t>(request->ops_size()) >
                                       kMaxSpare;
  has_copies = false;
  if (reset) {
    spare_maps.clear();
    spare_unmaps.clear();
    spare_translates.clear();
    arena.Reset();
    request = google::protobuf::Arena::CreateMessage<v1::BatchRequest>(&arena);
    return;
  }
  // Every op was built by AddMap/AddUnmap/AddTranslate: take its request out
  // (so clearing the op drops nothing on the arena), then clear the ops,
  // which the message keeps for its next add_ops().
  for (v1::BatchOp& op : *request->mutable_ops()) {
    switch (op.op_case()) {
      case v1::BatchOp::kMap:
        spare_maps.push_back(op.unsafe_arena_release_map());
        break;
      case v1::BatchOp::kUnmap:
        spare_unmaps.push_back(op.unsafe_arena_release_unmap());
        break;
      case v1::BatchOp::kTranslate:
        spare_translates.push_back(op.unsafe_arena_release_translate());
        break;
      default:
        assert(false);
        break;  // only Add() makes others, and it resets
    }
  }
  request->mutable_ops()->Clear();
}

absl::StatusOr<std::unique_ptr<BatchStream>> BatchStream::Open(const Client& client) {
  std::unique_ptr<BatchStream> batch(new BatchStream(client));
  if (!batch->reader_.joinable())
    return absl::UnavailableError("Batch: the stream could not be started");
  return batch;
}

BatchStream::BatchStream(Client client)
    : client_(std::move(client)), pending_(std::make_unique<Message>()) {
  const auto [stream, context] = OpenStream();
  if (stream == nullptr) return;
  {
    absl::MutexLock write_lock(&write_mu_);
    live_ = true;
  }
  reader_ = std::thread([this, stream = stream, context = context] { ReadLoop(stream, context); });
}

BatchStream::~BatchStream() { (void)Close(); }

size_t BatchStream::pending() const { return static_cast<size_t>(pending_->request->ops_size()); }

size_t BatchStream::Add(v1::BatchOp op) {
  const std::string& device = client_.device();
  if (!device.empty()) {
    switch (op.op_case()) {
      case v1::BatchOp::kMap:
        FillDevice(op.mutable_map(), device);
        break;
      case v1::BatchOp::kUnmap:
        FillDevice(op.mutable_unmap(), device);
        break;
      case v1::BatchOp::kMapSg:
        FillDevice(op.mutable_map_sg(), device);
        break;
      case v1::BatchOp::kUnmapSg:
        FillDevice(op.mutable_unmap_sg(), device);
        break;
      case v1::BatchOp::kTranslate:
        FillDevice(op.mutable_translate(), device);
        break;
      case v1::BatchOp::OP_NOT_SET:
        break;  // the daemon rejects it, naming the op
    }
  }
  pending_->has_copies = true;
  *NewOp() = std::move(op);  // a copy onto the arena
  return pending() - 1;
}

v1::BatchOp* BatchStream::NewOp() { return pending_->request->add_ops(); }

v1::MapRequest* BatchStream::NewMap() {
  v1::BatchOp* op = NewOp();
  std::vector<v1::MapRequest*>& spare = pending_->spare_maps;
  if (spare.empty()) return op->mutable_map();
  v1::MapRequest* map = spare.back();
  spare.pop_back();
  // Only requests built by AddMap are kept: device, mem (scalars only, so
  // clearing it frees nothing) and direction are all they set.
  map->clear_device();
  map->mutable_mem()->Clear();
  map->set_direction(v1::DmaDirection{});
  op->unsafe_arena_set_allocated_map(map);
  return map;
}

v1::UnmapRequest* BatchStream::NewUnmap() {
  v1::BatchOp* op = NewOp();
  std::vector<v1::UnmapRequest*>& spare = pending_->spare_unmaps;
  if (spare.empty()) return op->mutable_unmap();
  v1::UnmapRequest* unmap = spare.back();
  spare.pop_back();
  unmap->Clear();  // strings and scalars only: frees nothing
  op->unsafe_arena_set_allocated_unmap(unmap);
  return unmap;
}

v1::TranslateOp* BatchStream::NewTranslate() {
  v1::BatchOp* op = NewOp();
  std::vector<v1::TranslateOp*>& spare = pending_->spare_translates;
  if (spare.empty()) return op->mutable_translate();
  v1::TranslateOp* t = spare.back();
  spare.pop_back();
  t->Clear();  // strings and scalars only: frees nothing
  op->unsafe_arena_set_allocated_translate(t);
  return t;
}

size_t BatchStream::AddMap(uint64_t buffer_id, uint64_t offset_bytes, uint64_t length_bytes,
                           v1::DmaDirection direction, absl::string_view device) {
  v1::MapRequest* map = NewMap();
  if (const absl::string_view d = OwnDevice(device); !d.empty())
    map->set_device(d.data(), d.size());
  v1::MemRef* mem = map->mutable_mem();
  mem->set_buffer_id(buffer_id);
  mem->set_offset_bytes(offset_bytes);
  mem->set_length_bytes(length_bytes);
  map->set_direction(direction);
  return pending() - 1;
}

size_t BatchStream::AddUnmap(uint64_t dma_addr, absl::string_view device) {
  v1::UnmapRequest* unmap = NewUnmap();
  if (const absl::string_view d = OwnDevice(device); !d.empty())
    unmap->set_device(d.data(), d.size());
  unmap->set_dma_addr(dma_addr);
  return pending() - 1;
}

size_t BatchStream::AddTranslate(uint64_t iova, uint64_t length_bytes, v1::AccessKind access,
                                 absl::string_view device) {
  v1::TranslateOp* t = NewTranslate();
  if (const absl::string_view d = OwnDevice(device); !d.empty()) t->set_device(d.data(), d.size());
  t->set_iova(iova);
  t->set_length_bytes(length_bytes);
  t->set_access(access);
  return pending() - 1;
}

absl::Status BatchStream::CheckPending() const {
  const v1::BatchRequest& request = *pending_->request;
  // Only Add() makes MapSg operations, each weighing one more per segment.
  uint64_t segments = 0;
  if (pending_->has_copies) {
    for (const v1::BatchOp& op : request.ops()) {
      if (op.has_map_sg()) segments += static_cast<uint64_t>(op.map_sg().segments_size());
    }
  }
  const MessageLimits& limits = client_.options().limits;
  const uint64_t ops = static_cast<uint64_t>(request.ops_size());
  if (ops + segments > limits.max_batch_ops) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "Batch: ", ops, " operations and ", segments,
        " MapSg segments, more than limits.max_batch_ops=", limits.max_batch_ops,
        " (the daemon's --max_batch_ops) in one message; nothing was sent (send fewer at once)"));
  }
  return internal::CheckRequestBytes(client_.options(), request.ByteSizeLong());
}

BatchStream::ResponseFuture BatchStream::Send() {
  v1::BatchRequest* request = pending_->request;
  request->set_sequence(next_sequence_);
  if (!client_.device().empty()) request->set_device(client_.device());
  const internal::RequestId id = internal::NewRequestId();
  request->mutable_request_id()->assign(id.data(), id.size());  // reuses the string's storage
  std::promise<absl::StatusOr<BatchReply>> promise;
  ResponseFuture future = promise.get_future();
  if (absl::Status refused = CheckPending(); !refused.ok()) {
    // The daemon would refuse the message whole and end the stream: refused
    // here instead (its sequence not used), the stream stays usable.
    promise.set_value(std::move(refused));
    pending_->Recycle();
    return future;
  }
  const uint64_t sequence = next_sequence_++;
  std::unique_ptr<Message> next;
  {
    absl::MutexLock write_lock(&write_mu_);
    {
      absl::MutexLock lock(&mu_);
      if (closing_ || !broken_.ok()) {
        promise.set_value(closing_ ? absl::FailedPreconditionError("Batch: the stream is closed")
                                   : broken_);
        pending_->Recycle();
        return future;
      }
      // Kept until its response arrives, which may come only after a reopen.
      outstanding_.push_back({sequence, std::move(promise), std::move(pending_)});
      if (!answered_.empty()) {
        next = std::move(answered_.back());
        answered_.pop_back();
      }
    }
    // Not live: Resend() writes it on the next stream. A failed Write means
    // the stream ended; the reader sees the end too and reopens it or fails
    // the message.
    if (live_) (void)stream_->Write(*request);
  }
  if (next == nullptr) {
    pending_ = std::make_unique<Message>();
  } else {
    pending_ = std::move(next);
    pending_->Recycle();
  }
  return future;
}

std::pair<BatchStream::Stream*, grpc::ClientContext*> BatchStream::OpenStream() {
  auto context = std::make_unique<grpc::ClientContext>();
  client_.PrepareContext(context.get(), absl::InfiniteDuration());
  std::unique_ptr<Stream> stream = client_.connection()->dma->Batch(context.get());
  if (stream == nullptr) return {nullptr, nullptr};
  const std::pair<Stream*, grpc::ClientContext*> opened(stream.get(), context.get());
  absl::MutexLock write_lock(&write_mu_);
  stream_ = std::move(stream);  // the ended one first, then its context
  context_ = std::move(context);
  return opened;
}

void BatchStream::ReadLoop(Stream* stream, grpc::ClientContext* context) {
  const RetryPolicy& retry = client_.options().retry;
  // The reopen window: from the first break after a response, for
  // default_deadline and retry.max_attempts streams.
  absl::Time give_up = absl::InfiniteFuture();
  absl::Duration backoff = retry.initial_backoff;
  int opens = 1;
  grpc::Status status;
  while (true) {
    if (ReadResponses(stream, context)) {
      give_up = absl::InfiniteFuture();
      backoff = retry.initial_backoff;
      opens = 1;
    }
    if (resender_.joinable()) resender_.join();
    {
      absl::MutexLock write_lock(&write_mu_);
      live_ = false;
      status = stream_->Finish();
    }
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    if (give_up == absl::InfiniteFuture())
      give_up = absl::Now() + client_.options().default_deadline;
    if (!AwaitReopen(status, opens, backoff, give_up)) break;
    backoff = std::min(backoff * 2, retry.max_backoff);
    ++opens;
    std::tie(stream, context) = OpenStream();
    resender_ = std::thread([this] { Resend(); });
  }
  absl::MutexLock lock(&mu_);
  if (broken_.ok() && closing_ && outstanding_.empty() &&
      status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    // Broken while idle and closed before the reopen: every message was
    // answered, so nothing is lost and there is nothing to reopen for.
    broken_ = absl::FailedPreconditionError("Batch: the stream is closed");
    final_status_ = absl::OkStatus();
    return;
  }
  if (broken_.ok()) {
    broken_ = status.ok() ? absl::UnavailableError("Batch: the stream ended before its responses")
                          : FromGrpcStatus(status);
  }
  // A break not reopened ends the stream with why it was not.
  final_status_ =
      status.error_code() == grpc::StatusCode::UNAVAILABLE ? broken_ : FromGrpcStatus(status);
  FailOutstanding(broken_);
}

bool BatchStream::ReadResponses(Stream* stream, grpc::ClientContext* context) {
  google::protobuf::ArenaOptions options;
  options.start_block_size = size_t{64} << 10;
  options.max_block_size = size_t{1} << 20;
  bool any = false;
  while (true) {
    auto arena = std::make_unique<google::protobuf::Arena>(options);
    auto* response = google::protobuf::Arena::CreateMessage<v1::BatchResponse>(arena.get());
    if (!stream->Read(response)) return any;
    any = true;
    std::unique_ptr<Message> dropped;  // freed after the lock is released
    absl::MutexLock lock(&mu_);
    if (!broken_.ok()) continue;  // cancelled below: ReadLoop fails the rest at the end
    if (outstanding_.empty() || outstanding_.front().sequence != response->sequence()) {
      // Failed only once the stream has ended: a Resend() may still be
      // writing the outstanding messages.
      broken_ = FieldStatus(absl::StatusCode::kInternal, "sequence", response->sequence(),
                            "Batch response does not match the oldest outstanding request");
      context->TryCancel();
      continue;
    }
    Outstanding& answered = outstanding_.front();
    answered.promise.set_value(BatchReply(std::move(arena), response));
    if (answered_.size() < kMaxAnsweredMessages) {
      answered_.push_back(std::move(answered.message));
    } else {
      dropped = std::move(answered.message);
    }
    outstanding_.pop_front();
  }
}

bool BatchStream::AwaitReopen(const grpc::Status& ended, int opens, absl::Duration backoff,
                              absl::Time give_up) {
  const Options& options = client_.options();
  {
    absl::MutexLock lock(&mu_);
    if (StopReopening()) return false;
    if (opens >= options.retry.max_attempts || absl::Now() + backoff >= give_up) {
      broken_ = absl::UnavailableError(
          absl::StrCat("Batch: ", ended.error_message(), " (the stream was not reopened within ",
                       absl::FormatDuration(options.default_deadline), ", ", opens, " attempts)"));
      return false;
    }
    // Close() with nothing left to resend ends the wait.
    if (mu_.AwaitWithTimeout(absl::Condition(this, &BatchStream::StopReopening), backoff))
      return false;
  }
  // In slices, so that Close() is not kept waiting for an idle stream.
  const std::shared_ptr<grpc::Channel>& channel = client_.connection()->channel;
  for (absl::Time now = absl::Now(); now < give_up; now = absl::Now()) {
    const bool ready =
        channel->WaitForConnected(absl::ToChronoTime(std::min(give_up, now + kReopenPoll)));
    absl::MutexLock lock(&mu_);
    if (StopReopening()) return false;
    if (ready) return true;
  }
  absl::MutexLock lock(&mu_);
  broken_ = absl::UnavailableError(
      absl::StrCat("Batch: ", ended.error_message(), " (the daemon was not back within ",
                   absl::FormatDuration(options.default_deadline), ")"));
  return false;
}

void BatchStream::Resend() {
  absl::MutexLock write_lock(&write_mu_);
  // Messages Send() queues from here on are written after these, by Send().
  std::vector<const v1::BatchRequest*> messages;
  bool closing = false;
  {
    absl::MutexLock lock(&mu_);
    messages.reserve(outstanding_.size());
    for (const Outstanding& o : outstanding_) messages.push_back(o.message->request);
    closing = closing_;
  }
  // Each message stays valid until its response arrives, which needs its
  // Write first. A failed Write means the new stream ended too: the reader
  // sees it and resends them all on the next.
  bool written = true;
  for (const v1::BatchRequest* message : messages) {
    if (!stream_->Write(*message)) {
      written = false;
      break;
    }
  }
  live_ = true;
  if (closing && written) stream_->WritesDone();
}

void BatchStream::FailOutstanding(const absl::Status& status) {
  for (Outstanding& o : outstanding_) o.promise.set_value(status);
  outstanding_.clear();
}

absl::Status BatchStream::Close() {
  if (!reader_.joinable()) return final_status_;
  {
    absl::MutexLock write_lock(&write_mu_);
    {
      absl::MutexLock lock(&mu_);
      closing_ = true;
    }
    // Not live: the stream ended; the reader reopens it only to resend
    // outstanding messages, and Resend() half-closes it after them.
    if (live_) stream_->WritesDone();
  }
  reader_.join();
  return final_status_;
}

}  // namespace iommu::client
