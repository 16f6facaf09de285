#include "client/batch.h"

#include <cassert>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "client/connection.h"
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

}  // namespace

absl::StatusOr<std::unique_ptr<BatchStream>> BatchStream::Open(const Client& client) {
  std::unique_ptr<BatchStream> batch(new BatchStream(client));
  if (batch->stream_ == nullptr)
    return absl::UnavailableError("Batch: the stream could not be started");
  return batch;
}

BatchStream::BatchStream(Client client)
    : client_(std::move(client)),
      pending_arena_(PendingArenaOptions()),
      pending_(google::protobuf::Arena::CreateMessage<v1::BatchRequest>(&pending_arena_)) {
  client_.PrepareContext(&context_, absl::InfiniteDuration());
  stream_ = client_.connection()->dma->Batch(&context_);
  if (stream_ != nullptr) reader_ = std::thread([this] { ReadLoop(); });
}

BatchStream::~BatchStream() { (void)Close(); }

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
  pending_has_copies_ = true;
  *NewOp() = std::move(op);  // a copy onto the arena
  return pending_->ops_size() - 1;
}

v1::BatchOp* BatchStream::NewOp() { return pending_->add_ops(); }

v1::MapRequest* BatchStream::NewMap() {
  v1::BatchOp* op = NewOp();
  if (spare_maps_.empty()) return op->mutable_map();
  v1::MapRequest* map = spare_maps_.back();
  spare_maps_.pop_back();
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
  if (spare_unmaps_.empty()) return op->mutable_unmap();
  v1::UnmapRequest* unmap = spare_unmaps_.back();
  spare_unmaps_.pop_back();
  unmap->Clear();  // strings and scalars only: frees nothing
  op->unsafe_arena_set_allocated_unmap(unmap);
  return unmap;
}

v1::TranslateOp* BatchStream::NewTranslate() {
  v1::BatchOp* op = NewOp();
  if (spare_translates_.empty()) return op->mutable_translate();
  v1::TranslateOp* t = spare_translates_.back();
  spare_translates_.pop_back();
  t->Clear();  // strings and scalars only: frees nothing
  op->unsafe_arena_set_allocated_translate(t);
  return t;
}

void BatchStream::RecyclePending() {
  const bool reset = pending_has_copies_ || spare_maps_.size() + spare_unmaps_.size() +
                                                    spare_translates_.size() +
                                                    static_cast<size_t>(pending_->ops_size()) >
                                                kMaxSpare;
  pending_has_copies_ = false;
  if (reset) {
    spare_maps_.clear();
    spare_unmaps_.clear();
    spare_translates_.clear();
    pending_arena_.Reset();
    pending_ = google::protobuf::Arena::CreateMessage<v1::BatchRequest>(&pending_arena_);
    return;
  }
  // Every op was built by AddMap/AddUnmap/AddTranslate: take its request out
  // (so clearing the op drops nothing on the arena), then clear the ops,
  // which the message keeps for its next add_ops().
  for (v1::BatchOp& op : *pending_->mutable_ops()) {
    switch (op.op_case()) {
      case v1::BatchOp::kMap:
        spare_maps_.push_back(op.unsafe_arena_release_map());
        break;
      case v1::BatchOp::kUnmap:
        spare_unmaps_.push_back(op.unsafe_arena_release_unmap());
        break;
      case v1::BatchOp::kTranslate:
        spare_translates_.push_back(op.unsafe_arena_release_translate());
        break;
      default:
        assert(false);
        break;  // only Add() makes others, and it resets
    }
  }
  pending_->mutable_ops()->Clear();
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
  return pending_->ops_size() - 1;
}

size_t BatchStream::AddUnmap(uint64_t dma_addr, absl::string_view device) {
  v1::UnmapRequest* unmap = NewUnmap();
  if (const absl::string_view d = OwnDevice(device); !d.empty())
    unmap->set_device(d.data(), d.size());
  unmap->set_dma_addr(dma_addr);
  return pending_->ops_size() - 1;
}

size_t BatchStream::AddTranslate(uint64_t iova, uint64_t length_bytes, v1::AccessKind access,
                                 absl::string_view device) {
  v1::TranslateOp* t = NewTranslate();
  if (const absl::string_view d = OwnDevice(device); !d.empty()) t->set_device(d.data(), d.size());
  t->set_iova(iova);
  t->set_length_bytes(length_bytes);
  t->set_access(access);
  return pending_->ops_size() - 1;
}

BatchStream::ResponseFuture BatchStream::Send() {
  const uint64_t sequence = next_sequence_++;
  pending_->set_sequence(sequence);
  if (!client_.device().empty()) pending_->set_device(client_.device());
  // Write serialises the message before it returns; then the pending
  // message starts over, whatever happens below.
  auto reset = absl::MakeCleanup([this] { RecyclePending(); });
  std::promise<absl::StatusOr<BatchReply>> promise;
  ResponseFuture future = promise.get_future();
  absl::MutexLock write_lock(&write_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (closed_ || !broken_.ok()) {
      promise.set_value(closed_ ? absl::FailedPreconditionError("Batch: the stream is closed")
                                : broken_);
      return future;
    }
    outstanding_.push_back({sequence, std::move(promise)});
  }
  if (!stream_->Write(*pending_)) {
    // The stream is gone; the reader sees the end and fails what is outstanding.
    context_.TryCancel();
  }
  return future;
}

void BatchStream::ReadLoop() {
  google::protobuf::ArenaOptions options;
  options.start_block_size = size_t{64} << 10;
  options.max_block_size = size_t{1} << 20;
  while (true) {
    auto arena = std::make_unique<google::protobuf::Arena>(options);
    auto* response = google::protobuf::Arena::CreateMessage<v1::BatchResponse>(arena.get());
    if (!stream_->Read(response)) break;
    absl::MutexLock lock(&mu_);
    if (outstanding_.empty() || outstanding_.front().sequence != response->sequence()) {
      broken_ = FieldStatus(absl::StatusCode::kInternal, "sequence", response->sequence(),
                            "Batch response does not match the oldest outstanding request");
      FailOutstanding(broken_);
      context_.TryCancel();
      continue;
    }
    outstanding_.front().promise.set_value(BatchReply(std::move(arena), response));
    outstanding_.pop_front();
  }
  absl::MutexLock lock(&mu_);
  if (broken_.ok())
    broken_ = absl::UnavailableError("Batch: the stream ended before its responses");
  FailOutstanding(broken_);
}

void BatchStream::FailOutstanding(const absl::Status& status) {
  for (Outstanding& o : outstanding_) o.promise.set_value(status);
  outstanding_.clear();
}

absl::Status BatchStream::Close() {
  if (closed_ || stream_ == nullptr) return final_status_;
  {
    absl::MutexLock write_lock(&write_mu_);
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  stream_->WritesDone();
  reader_.join();
  final_status_ = FromGrpcStatus(stream_->Finish());
  return final_status_;
}

}  // namespace iommu::client
