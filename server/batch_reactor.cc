// SPDX-License-Identifier: Apache-2.0
#include "server/batch_reactor.h"

#include <algorithm>
#include <type_traits>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "core/base/status_macros.h"
#include "server/proto_convert.h"

namespace iommu::server {
namespace {

absl::Status Draining() { return absl::UnavailableError("iommud is shutting down"); }

}  // namespace

BatchReactor::BatchReactor(const ServiceEnv& env, grpc::CallbackServerContext* context)
    : env_(env), start_ns_(MonotonicNanos()) {
  env_.metrics->Started(Method::kBatch);
  absl::StatusOr<Identity> identity = AuthenticateCall(env_, *context);
  absl::StatusOr<uint64_t> session = Authenticator::SessionId(*context);
  if (!identity.ok() || !session.ok()) {
    FinishWith(!identity.ok() ? identity.status() : session.status());
    return;
  }
  identity_ = *std::move(identity);
  session_id_ = *session;
  // A device credential acts as its device alone: its slot is taken now.
  if (identity_.kind == Identity::Kind::kDevice) {
    absl::Status s;
    {
      absl::MutexLock l(&mu_);
      s = AcquireSlot(env_.stream_limiter, identity_.device, &slot_);
    }
    if (!s.ok()) {
      FinishWith(s);
      return;
    }
    counted_ = true;
    device_ = identity_.device;
  }
  registered_ = env_.streams->Add(this);
  if (!registered_) {
    FinishWith(Draining());
    return;
  }
  {
    absl::MutexLock l(&mu_);
    reading_ = true;
  }
  StartRead(&in_);
}

void BatchReactor::ResetArena() {
  const size_t used = arena_.has_value() ? static_cast<size_t>(arena_->SpaceAllocated()) : 0;
  const bool grow = arena_block_ == nullptr ||
                    (used > arena_block_bytes_ && arena_block_bytes_ < kMaxArenaBlockBytes);
  if (!grow) {
    arena_->Reset();  // frees every block but the first
  } else {
    arena_.reset();  // before the block it allocated from
    arena_block_bytes_ = std::clamp(std::max(used, 2 * arena_block_bytes_), kMinArenaBlockBytes,
                                    kMaxArenaBlockBytes);
    arena_block_ = std::make_unique<char[]>(arena_block_bytes_);
    google::protobuf::ArenaOptions options;
    options.initial_block = arena_block_.get();
    options.initial_block_size = arena_block_bytes_;
    options.max_block_size = kMaxExtraBlockBytes;
    arena_.emplace(options);
  }
  request_ = google::protobuf::Arena::CreateMessage<v1::BatchRequest>(&*arena_);
  response_ = google::protobuf::Arena::CreateMessage<v1::BatchResponse>(&*arena_);
}

namespace {

// The device a stream acts as, from its first message: the message's
// `device`, else its first operation's (empty: the admin).
const std::string& FirstDevice(const v1::BatchRequest& request) {
  if (!request.device().empty() || request.ops_size() == 0) return request.device();
  const v1::BatchOp& op = request.ops(0);
  switch (op.op_case()) {
    case v1::BatchOp::kMap:
      return op.map().device();
    case v1::BatchOp::kUnmap:
      return op.unmap().device();
    case v1::BatchOp::kMapSg:
      return op.map_sg().device();
    case v1::BatchOp::kUnmapSg:
      return op.unmap_sg().device();
    case v1::BatchOp::kTranslate:
      return op.translate().device();
    case v1::BatchOp::OP_NOT_SET:
      break;
  }
  return request.device();
}

}  // namespace

absl::Status BatchReactor::Accept() {
  // Its bytes in one piece (a reference to its one slice, or a copy of its
  // slices); the message itself is dropped at once.
  const FlatBytes flat(in_);
  in_.Clear();
  RequestScanner::Totals totals;
  const absl::Status scanned =
      env_.scanner->Scan(v1::BatchRequest::descriptor(), flat.view(), &totals);
  const std::string which = absl::StrCat("iommu.v1.Dma/Batch: message ", messages_,
                                         " of the stream (nothing of it was applied): ");
  if (!scanned.ok()) return absl::Status(scanned.code(), absl::StrCat(which, scanned.message()));
  // A MapSg counts one more per segment: what bounds the response is the
  // operations and the DMA segments they answer with.
  const uint64_t weight = totals[int(Counted::kBatchOps)] + totals[int(Counted::kSgSegments)];
  if (weight > env_.limits->max_batch_ops) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s%d operations and %d MapSg segments, more than --max_batch_ops=%d in one message "
        "(split it)",
        which, totals[int(Counted::kBatchOps)], totals[int(Counted::kSgSegments)],
        env_.limits->max_batch_ops));
  }
  if (arena_block_ == nullptr) ResetArena();  // the stream's first message
  bool parsed;
  std::string reason;
  {
    ProtobufLogCapture capture;
    parsed = request_->ParseFromArray(flat.view().data(), static_cast<int>(flat.view().size()));
    reason = capture.text();
  }
  if (!parsed) {
    return absl::InvalidArgumentError(
        absl::StrCat(which, "it could not be parsed as iommu.v1.BatchRequest",
                     reason.empty() ? "" : absl::StrCat(" (", reason, ")")));
  }
  if (counted_) return absl::OkStatus();
  absl::StatusOr<core::Caller> caller =
      Authenticator::CallerFor(identity_, FirstDevice(*request_), session_id_);
  if (!caller.ok()) return caller.status();
  absl::MutexLock l(&mu_);
  if (finished_) return Draining();  // drained meanwhile
  RETURN_IF_ERROR(AcquireSlot(env_.stream_limiter, caller->device, &slot_));
  counted_ = true;
  device_ = caller->device;
  return absl::OkStatus();
}

bool BatchReactor::MarkFinishedLocked(const absl::Status& status) {
  if (finished_) return false;
  finished_ = true;
  final_status_ = status;
  return true;
}

void BatchReactor::FinishWith(const absl::Status& status) {
  bool finish;
  StreamSlot slot;
  {
    absl::MutexLock l(&mu_);
    finish = MarkFinishedLocked(status);
    if (finish) slot = std::move(slot_);
  }
  slot.Reset();  // before the client can see the end
  if (finish) Finish(ToGrpcStatus(status));
}

void BatchReactor::OnReadDone(bool ok) {
  {
    absl::MutexLock l(&mu_);
    reading_ = false;
    if (finished_) return;
  }
  if (!ok) {  // the client closed its side, and every request was answered
    FinishWith(absl::OkStatus());
    return;
  }
  ++messages_;
  env_.metrics->Received(Method::kBatch);
  const size_t in_bytes = in_.Length();
  if (absl::Status accepted = Accept(); !accepted.ok()) {
    FinishWith(accepted);
    return;
  }
  Process();
  // The response fits by construction (--max_batch_ops, ValidateLimits).
  if (absl::Status s = SerializeReply(env_, Method::kBatch, *response_, &out_); !s.ok()) {
    FinishWith(s);
    return;
  }
  env_.metrics->Sent(Method::kBatch);
  if (env_.trimmer != nullptr) env_.trimmer->Finished(std::max(in_bytes, out_.Length()));
  StartWrite(&out_);
}

void BatchReactor::OnWriteDone(bool ok) {
  // The response is written and no read is pending: nothing refers to either
  // message. Done before reading_ is set, after which Drain may finish the
  // stream from another thread.
  out_.Clear();
  ResetArena();
  absl::Status end;
  {
    absl::MutexLock l(&mu_);
    if (finished_) return;
    if (!ok) {
      end = absl::CancelledError("the client went away");
    } else if (draining_) {
      end = Draining();
    } else {
      reading_ = true;
    }
  }
  if (!end.ok()) {
    FinishWith(end);
    return;
  }
  StartRead(&in_);
}

void BatchReactor::Drain() {
  bool idle;
  {
    absl::MutexLock l(&mu_);
    draining_ = true;
    // Idle between requests: end now. Otherwise OnWriteDone ends it after the
    // response in progress.
    idle = reading_;
  }
  if (idle) FinishWith(Draining());
}

void BatchReactor::OnDone() {
  if (registered_) env_.streams->Remove(this);
  absl::Status status;
  {
    absl::MutexLock l(&mu_);
    status = finished_ ? final_status_ : absl::CancelledError("cancelled");
  }
  const int64_t elapsed_ns = MonotonicNanos() - start_ns_;
  env_.metrics->Handled(Method::kBatch, status.code(), elapsed_ns);
  LogCall("iommu.v1.Dma", "Batch", device_, status, elapsed_ns);
  Unpin();
}

namespace {

// The device a Map or Unmap op acts as (its own, else the message's), or
// nullptr for any other op.
const std::string* MapUnmapDevice(const v1::BatchRequest& request, const v1::BatchOp& op) {
  const std::string* own;
  switch (op.op_case()) {
    case v1::BatchOp::kMap:
      own = &op.map().device();
      break;
    case v1::BatchOp::kUnmap:
      own = &op.unmap().device();
      break;
    default:
      return nullptr;
  }
  return own->empty() ? &request.device() : own;
}

}  // namespace

void BatchReactor::Process() {
  response_->set_sequence(request_->sequence());
  const int n = request_->ops_size();
  auto* results = response_->mutable_results();
  results->Reserve(n);
  for (int i = 0; i < n; ++i) results->Add();
  next_call_ = 0;
  if (!request_->request_id().empty()) {
    if (absl::Status s = core::CheckRequestId("request_id", request_->request_id()); !s.ok()) {
      for (int i = 0; i < n; ++i) SetError(s, results->Mutable(i));
      return;
    }
    // The sequence number is not part of it: a resend on a new stream may
    // number its messages afresh.
    const uint64_t sequence = request_->sequence();
    request_->set_sequence(0);
    request_->SerializeToString(&scratch_);
    request_->set_sequence(sequence);
    fingerprint_ = core::RequestFingerprint("Batch", scratch_);
  }
  for (int i = 0; i < n;) {
    const std::string* device = MapUnmapDevice(*request_, request_->ops(i));
    if (device == nullptr) {
      RunOp(request_->ops(i), results->Mutable(i));
      ++i;
      continue;
    }
    int end = i + 1;
    while (end < n) {
      const std::string* next = MapUnmapDevice(*request_, request_->ops(end));
      if (next == nullptr || *next != *device) break;
      ++end;
    }
    RunMapUnmapRun(i, end);
    i = end;
  }
}

// Appends `result` as a BatchResponse.results entry (field 2), so that the
// appended entries parse as a BatchResponse.
void BatchReactor::AppendResultField(const v1::BatchResult& result, std::string* out) {
  out->push_back(char((2 << 3) | 2));  // field 2, length-delimited
  for (uint64_t n = result.ByteSizeLong();; n >>= 7) {
    if (n < 0x80) {
      out->push_back(char(n));
      break;
    }
    out->push_back(char((n & 0x7f) | 0x80));
  }
  result.AppendToString(out);
}

void BatchReactor::SetError(const absl::Status& status, v1::BatchResult* result) {
  result->Clear();
  result->set_code(static_cast<int>(status.code()));
  // Bounded, so that the response's size is (reply_bytes::kBatchErrorResult).
  result->set_message(BoundedMessage(status.message(), reply_bytes::kMaxResultMessageBytes));
}

void BatchReactor::RunMapUnmapRun(int begin, int end) {
  const std::string& device = *MapUnmapDevice(*request_, request_->ops(begin));
  // CallerFor depends on the identity and the device name only: one answer for
  // the run.
  absl::StatusOr<core::Caller> caller = Authenticator::CallerFor(identity_, device, session_id_);
  if (!caller.ok()) {
    for (int i = begin; i < end; ++i) SetError(caller.status(), response_->mutable_results(i));
    return;
  }
  run_ops_.clear();
  run_index_.clear();
  for (int i = begin; i < end; ++i) {
    const v1::BatchOp& op = request_->ops(i);
    if (op.op_case() == v1::BatchOp::kMap) {
      absl::StatusOr<core::MapRequest> map = FromProto(op.map());
      if (!map.ok()) {
        // Fails before core, as Map would: no effect on the others.
        SetError(map.status(), response_->mutable_results(i));
        continue;
      }
      run_ops_.emplace_back(*map);
    } else {
      run_ops_.emplace_back(FromProto(op.unmap()));
    }
    run_index_.push_back(i);
  }
  run_results_.resize(run_ops_.size());
  auto fill = [this](absl::Span<const core::DmaBatchResult> results, auto&& result_of) {
    for (size_t k = 0; k < results.size(); ++k) {
      v1::BatchResult* result = result_of(k);
      const core::DmaBatchResult& r = results[k];
      if (!r.status.ok()) {
        SetError(r.status, result);
      } else if (std::holds_alternative<core::MapRequest>(run_ops_[k])) {
        ToProto(r.map, result->mutable_map());
      }
    }
  };
  auto live = [&](size_t k) { return response_->mutable_results(run_index_[k]); };
  bool filled = false;
  const int call = next_call_++;
  std::optional<core::RequestScope> scope;
  if (!request_->request_id().empty()) {
    // The results are converted once, into the response, and recorded as a
    // BatchResponse holding just this run's results.
    scope.emplace(env_.broker->request_log(), SubRequest(*caller, call),
                  [&](const void* captured, const std::type_info& type) {
                    using Results = absl::Span<const core::DmaBatchResult>;
                    if (type != typeid(Results)) std::abort();  // see ReplyEncoder
                    fill(*static_cast<const Results*>(captured), live);
                    filled = true;
                    std::string record;
                    for (const int i : run_index_) {
                      AppendResultField(response_->results(i), &record);
                    }
                    return record;
                  });
    absl::StatusOr<std::optional<std::string>> replay =
        scope->Begin(absl::Now() + absl::Seconds(30));
    if (!replay.ok()) {
      for (int i : run_index_) SetError(replay.status(), response_->mutable_results(i));
      return;
    }
    if (replay->has_value()) {
      v1::BatchResponse record;
      if (!record.ParseFromString(**replay) || record.results_size() != int(run_index_.size())) {
        const absl::Status bad = absl::DataLossError(
            absl::StrFormat("request_id=\"%s\": the recorded reply does not match the message",
                            request_->request_id()));
        for (int i : run_index_) SetError(bad, response_->mutable_results(i));
        return;
      }
      for (size_t k = 0; k < run_index_.size(); ++k) {
        response_->mutable_results(run_index_[k])->CopyFrom(record.results(int(k)));
      }
      return;
    }
  }
  env_.broker->MapUnmapBatch(*caller, caller->device, run_ops_, absl::MakeSpan(run_results_));
  if (!filled) fill(run_results_, live);
}

core::RequestState BatchReactor::SubRequest(const core::Caller& caller, int k) const {
  return core::RequestState{.principal = RequestPrincipal(caller),
                            .request_id = absl::StrCat(request_->request_id(), "#", k),
                            .fingerprint = fingerprint_};
}

template <typename Result, typename Call, typename Fill>
absl::Status BatchReactor::RunOnce(const core::Caller& caller, v1::BatchResult* result, Call&& call,
                                   Fill&& fill) {
  auto run = [&]() -> absl::Status {
    if constexpr (std::is_same_v<Result, absl::Status>) {
      return call();
    } else {
      absl::StatusOr<Result> r = call();
      if (!r.ok()) return r.status();
      fill(*r, result);
      return absl::OkStatus();
    }
  };
  const int k = next_call_++;
  if (request_->request_id().empty()) return run();
  core::RequestScope scope(env_.broker->request_log(), SubRequest(caller, k),
                           [&](const void* captured, const std::type_info& type) {
                             if (type != typeid(Result)) std::abort();  // see ReplyEncoder
                             v1::BatchResponse record;
                             v1::BatchResult* one = record.add_results();
                             if constexpr (!std::is_same_v<Result, absl::Status>) {
                               fill(*static_cast<const Result*>(captured), one);
                             }
                             return record.SerializeAsString();
                           });
  absl::StatusOr<std::optional<std::string>> replay = scope.Begin(absl::Now() + absl::Seconds(30));
  if (!replay.ok()) return replay.status();
  if (!replay->has_value()) return run();
  v1::BatchResponse record;
  if (!record.ParseFromString(**replay) || record.results_size() != 1) {
    return absl::DataLossError(
        absl::StrFormat("request_id=\"%s\": the recorded reply does not match the message",
                        request_->request_id()));
  }
  result->CopyFrom(record.results(0));
  return absl::OkStatus();
}

void BatchReactor::RunOp(const v1::BatchOp& op, v1::BatchResult* result) {
  auto run = [&]() -> absl::Status {
    switch (op.op_case()) {
      case v1::BatchOp::kMap:
      case v1::BatchOp::kUnmap:
        // Never here: Process() applies every Map and Unmap in a run
        // (RunMapUnmapRun).
        return absl::InternalError("a Map or Unmap op outside a run");
      case v1::BatchOp::kMapSg: {
        ASSIGN_OR_RETURN(
            core::Caller caller,
            Authenticator::CallerFor(identity_, OpDevice(op.map_sg().device()), session_id_));
        ASSIGN_OR_RETURN(core::MapSgRequest req, FromProto(op.map_sg()));
        return RunOnce<core::MapSgResult>(
            caller, result, [&] { return env_.broker->MapSg(caller, caller.device, req); },
            [](const core::MapSgResult& mapped, v1::BatchResult* out) {
              ToProto(mapped, out->mutable_map_sg());
            });
      }
      case v1::BatchOp::kUnmapSg: {
        ASSIGN_OR_RETURN(
            core::Caller caller,
            Authenticator::CallerFor(identity_, OpDevice(op.unmap_sg().device()), session_id_));
        return RunOnce<absl::Status>(
            caller, result,
            [&] {
              return env_.broker->UnmapSg(caller, caller.device,
                                          core::Iova(op.unmap_sg().dma_addr()));
            },
            kNoFill);
      }
      case v1::BatchOp::kTranslate: {
        ASSIGN_OR_RETURN(
            core::Caller caller,
            Authenticator::CallerFor(identity_, OpDevice(op.translate().device()), session_id_));
        // As the unary Translate: an access whose answer could not fit in a
        // reply is refused (its result here is small, but the core lists
        // every piece).
        RETURN_IF_ERROR(CheckReplyFits(
            *env_.limits, "length_bytes", op.translate().length_bytes(),
            MostTranslateReplyBytes(op.translate().iova(), op.translate().length_bytes())));
        ASSIGN_OR_RETURN(core::TranslateRequest req, FromProto(op.translate(), caller.device));
        ASSIGN_OR_RETURN(core::TranslateResult translated, env_.broker->Translate(caller, req));
        ToProto(translated, result->mutable_translate());
        return absl::OkStatus();
      }
      case v1::BatchOp::OP_NOT_SET:
        break;
    }
    return absl::InvalidArgumentError(
        "op=\"\": must be one of map, unmap, map_sg, unmap_sg, translate");
  };
  if (absl::Status status = run(); !status.ok()) SetError(status, result);
}

}  // namespace iommu::server
