// SPDX-License-Identifier: Apache-2.0
// Integration: the limits of docs/design.md#limits against the real iommud,
// each driven by the hostile request it exists for. Every refusal is checked
// for its code, for a message naming the flag and its value, and for leaving
// nothing behind (GetStats, the device's mappings and buffers); the memory
// bound is checked on the daemon's VmRSS after the worst streams the limits
// allow, and the stream and echo bounds on what the daemon sends and logs.

#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <future>
#include <thread>

#include "tests/daemon_harness.h"
#include "tests/test_clients.h"

namespace iommu::testing {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using grpc::StatusCode;

// The defaults of server/limits.h, as the daemon documents them.
constexpr uint32_t kMaxMessageBytes = 4u << 20;
constexpr int kMaxBatchOps = 8192;
constexpr int kMaxSgSegments = 65536;
constexpr int kMaxTranslateAccesses = 16384;
constexpr int kMaxBufferRuns = 131072;
constexpr int kMaxStringBytes = 256;
constexpr int kMaxStreamsPerDevice = 16;
constexpr int kMaxStreamsPerConnection = 100;

// The daemon's resident set, from /proc/<pid>/status (VmRSS), in bytes.
uint64_t RssBytes(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A channel of its own connection: gRPC shares connections between channels
// to one target, and one to a daemon that has since stopped may still look
// ready to the first call after a restart.
std::shared_ptr<grpc::Channel> FreshChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

grpc::ByteBuffer Bytes(const std::string& s) {
  grpc::Slice slice(s);
  return grpc::ByteBuffer(&slice, 1);
}

// One unary call of `method` with `request` as raw bytes.
grpc::Status RawUnary(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                      const std::string& request) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  const grpc::ByteBuffer in = Bytes(request);
  grpc::ByteBuffer out;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &in, &out,
                 [&](grpc::Status s) { done.set_value(std::move(s)); });
  return done.get_future().get();
}

// A bidirectional call of `method` writing `messages` as raw bytes, then
// reading until the end; the replies read and the final status.
grpc::Status RawStream(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                       const std::vector<std::string>& messages,
                       std::vector<std::string>* replies) {
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto call = stub.PrepareCall(&ctx, method, &cq);
  void* tag;
  bool ok = false;
  int next = 0;
  auto step = [&] {
    cq.Next(&tag, &ok);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(++next));
  if (step()) {
    for (const std::string& m : messages) {
      call->Write(Bytes(m), reinterpret_cast<void*>(++next));
      if (!step()) break;
    }
    call->WritesDone(reinterpret_cast<void*>(++next));
    step();
    while (true) {
      grpc::ByteBuffer reply;
      call->Read(&reply, reinterpret_cast<void*>(++next));
      if (!step()) break;
      std::vector<grpc::Slice> slices;
      (void)reply.Dump(&slices);
      std::string bytes;
      for (const grpc::Slice& s : slices)
        bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
      replies->push_back(std::move(bytes));
    }
  }
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(++next));
  step();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

// A Batch stream that writes `request` and reads its reply; the reply (when
// one came) and the stream's status after a half-close.
struct BatchOutcome {
  bool answered = false;
  v1::BatchResponse reply;
  grpc::Status status;
};
BatchOutcome BatchOnce(Stubs& s, const v1::BatchRequest& request) {
  BatchOutcome out;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto stream = s.dma->Batch(&ctx);
  if (stream->Write(request)) out.answered = stream->Read(&out.reply);
  stream->WritesDone();
  out.status = stream->Finish();
  return out;
}

class LimitsTest : public ::testing::Test {
 protected:
  void Start(std::vector<std::string> flags = {}) {
    ASSERT_TRUE(daemon_.Start(std::move(flags))) << daemon_.log();
    stubs_ = std::make_unique<Stubs>(Insecure(daemon_.unix_target()));
  }
  uint64_t AllocBuffer(const std::string& device, uint64_t size, v1::Placement placement) {
    v1::AllocBufferRequest r;
    r.set_device(device);
    r.set_size_bytes(size);
    r.set_placement(placement);
    v1::AllocBufferResponse out;
    const grpc::Status s = stubs_->memory->AllocBuffer(Ctx().get(), r, &out);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return out.buffer().buffer_id();
  }
  v1::GetStatsResponse Stats() {
    v1::GetStatsResponse stats;
    EXPECT_TRUE(stubs_->stats->GetStats(Ctx().get(), {}, &stats).ok());
    return stats;
  }
  v1::DeviceInfo Device(const std::string& name) {
    v1::ListDevicesRequest r;
    r.set_device(name);
    v1::ListDevicesResponse out;
    EXPECT_TRUE(stubs_->devices->ListDevices(Ctx().get(), r, &out).ok());
    return out.devices_size() == 1 ? out.devices(0) : v1::DeviceInfo();
  }
  // GetStats and every device's usage: what a refused request must leave as
  // it found.
  std::string State() {
    std::string out = Stats().DebugString();
    v1::ListDevicesResponse devices;
    EXPECT_TRUE(stubs_->devices->ListDevices(Ctx().get(), {}, &devices).ok());
    for (const v1::DeviceInfo& d : devices.devices()) {
      out += d.config().name() + " mappings=" + std::to_string(d.mappings()) +
             " mapped=" + std::to_string(d.mapped_bytes()) +
             " buffers=" + std::to_string(d.buffers()) + "\n";
    }
    return out;
  }
  static v1::BatchRequest Maps(const std::string& device, uint64_t buffer, int n) {
    v1::BatchRequest r;
    r.set_device(device);
    for (int i = 0; i < n; ++i) {
      v1::MapRequest* m = r.add_ops()->mutable_map();
      *m->mutable_mem() = BufferRef(buffer, 0, 4096);
      m->set_direction(v1::DMA_DIRECTION_TO_DEVICE);
    }
    return r;
  }

  DaemonProcess daemon_;
  std::unique_ptr<Stubs> stubs_;
};

// Finding: one ~7 MB Batch message cost ~470 MB of RSS, and 8 streams 3.9 GB.
// Now a message of more operations than --max_batch_ops is refused before it
// is parsed, and the largest message accepted costs at most
//   2 x max_message_bytes        (its bytes until parsed, its reply's until written)
//   + max_batch_ops x 1.5 KiB    (each operation parsed, its result, the core's scratch)
//   + 1 MiB                      (the arena block a stream keeps)
// per stream in flight: ~21 MiB under the defaults. Every device may hold
// --max_streams_per_device of them.
TEST_F(LimitsTest, HostileBatchStreamsStayWithinTheMemoryBoundOfTheLimits) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const uint64_t buffer = AllocBuffer("nic0", 4096, v1::PLACEMENT_CONTIGUOUS);
  ASSERT_TRUE(BatchOnce(*stubs_, Maps("nic0", buffer, 16)).status.ok());  // warm the paths
  const uint64_t baseline = RssBytes(daemon_.pid());
  ASSERT_GT(baseline, 0u);

  // What a hostile client sends: as many operations as fit in a message...
  v1::BatchRequest flood = Maps("nic0", 987654321, 1);
  const size_t op_bytes = flood.ByteSizeLong() - Maps("nic0", 987654321, 0).ByteSizeLong();
  while (flood.ops_size() < static_cast<int>((kMaxMessageBytes - 64) / op_bytes)) {
    *flood.add_ops() = flood.ops(0);
  }
  ASSERT_LE(flood.ByteSizeLong(), kMaxMessageBytes);
  ASSERT_GT(flood.ops_size(), 200000);
  // ...and the largest message accepted, each operation as large as it can
  // be (a name of --max_string_bytes, every field set) and failing, so that
  // its result carries a message.
  v1::BatchRequest largest = Maps("nic0", 987654321, 0);
  for (int i = 0; i < kMaxBatchOps; ++i) {
    v1::MapRequest* m = largest.add_ops()->mutable_map();
    m->set_device(std::string(kMaxStringBytes, 'x'));
    *m->mutable_mem() = BufferRef(987654321, 4096, 4096);
    m->set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
    m->mutable_attrs()->set_privileged(true);
  }
  ASSERT_LE(largest.ByteSizeLong(), kMaxMessageBytes);

  const int kStreams = kMaxStreamsPerDevice;
  const int kRounds = 4;
  std::vector<std::thread> threads;
  std::vector<std::string> failures(kStreams);
  for (int t = 0; t < kStreams; ++t) {
    threads.emplace_back([&, t] {
      Stubs s(Insecure(daemon_.unix_target()));
      const BatchOutcome refused = BatchOnce(s, flood);
      if (refused.answered || refused.status.error_code() != StatusCode::RESOURCE_EXHAUSTED ||
          !Contains(refused.status.error_message(), "--max_batch_ops=8192")) {
        failures[t] = "flood: " + refused.status.error_message();
        return;
      }
      grpc::ClientContext ctx;
      auto stream = s.dma->Batch(&ctx);
      for (int r = 0; r < kRounds; ++r) {
        v1::BatchResponse reply;
        if (!stream->Write(largest) || !stream->Read(&reply) ||
            reply.results_size() != kMaxBatchOps || reply.results(0).code() != 5) {
          failures[t] = "largest: round " + std::to_string(r);
          break;
        }
      }
      stream->WritesDone();
      const grpc::Status end = stream->Finish();
      if (!end.ok() && failures[t].empty()) failures[t] = "largest: " + end.error_message();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < kStreams; ++t) EXPECT_EQ(failures[t], "") << "stream " << t;

  const uint64_t rss = RssBytes(daemon_.pid());
  const uint64_t per_stream = 2 * uint64_t{kMaxMessageBytes} + kMaxBatchOps * 1536 + (1 << 20);
  const uint64_t bound = baseline + kStreams * per_stream;
  std::printf(
      "VmRSS: %.1f MiB before, %.1f MiB after %d streams x (a %zu-op flood + %d x %d-op "
      "messages); bound %.1f MiB\n",
      baseline / 1048576.0, rss / 1048576.0, kStreams, static_cast<size_t>(flood.ops_size()),
      kRounds, kMaxBatchOps, bound / 1048576.0);
  EXPECT_LE(rss, bound);
  // Nothing of it was applied (the 16 mappings are the warm-up's), and the
  // streams' slots came back.
  EXPECT_EQ(Device("nic0").mappings(), 16u);
  EXPECT_TRUE(BatchOnce(*stubs_, Maps("nic0", buffer, 1)).status.ok());
  EXPECT_EQ(daemon_.Stop(), 0);
}

// Finding: a Batch whose reply passed the send limit applied every operation
// and then failed the stream. Now a message is accepted only if its reply
// fits: beyond --max_batch_ops it ends the stream with nothing applied (and
// nothing recorded under its request id), at the limit it is applied and its
// whole reply arrives within a default client's receive limit.
TEST_F(LimitsTest, ABatchWhoseReplyCouldNotFitIsRefusedBeforeAnyOperation) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const uint64_t buffer = AllocBuffer("nic0", 4096, v1::PLACEMENT_CONTIGUOUS);
  const std::string before = State();

  v1::BatchRequest over = Maps("nic0", buffer, kMaxBatchOps + 1);
  over.set_request_id("limits-1");
  BatchOutcome out = BatchOnce(*stubs_, over);
  EXPECT_FALSE(out.answered);
  EXPECT_EQ(out.status.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(
      Contains(out.status.error_message(), "ops: 8193 entries, more than --max_batch_ops=8192"))
      << out.status.error_message();
  EXPECT_TRUE(Contains(out.status.error_message(), "nothing of it was applied"));
  // A MapSg weighs one more per segment.
  v1::BatchRequest weighted = Maps("nic0", buffer, 1);
  v1::MapSgRequest* sg = weighted.add_ops()->mutable_map_sg();
  for (int i = 0; i < kMaxBatchOps - 1; ++i) *sg->add_segments() = BufferRef(buffer, 0, 4096);
  out = BatchOnce(*stubs_, weighted);
  EXPECT_EQ(out.status.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(Contains(out.status.error_message(), "2 operations and 8191 MapSg segments"))
      << out.status.error_message();
  EXPECT_EQ(State(), before);

  // Nothing was recorded under the refused message's request id: the id
  // runs a new (smaller) message rather than being refused as reused.
  v1::BatchRequest retry = Maps("nic0", buffer, 1);
  retry.set_request_id("limits-1");
  out = BatchOnce(*stubs_, retry);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  ASSERT_EQ(out.reply.results_size(), 1);
  EXPECT_EQ(out.reply.results(0).code(), 0) << out.reply.results(0).message();
  EXPECT_EQ(Device("nic0").mappings(), 1u);

  // At the limit: applied, and the whole reply arrives.
  out = BatchOnce(*stubs_, Maps("nic0", buffer, kMaxBatchOps));
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  ASSERT_EQ(out.reply.results_size(), kMaxBatchOps);
  for (const v1::BatchResult& r : out.reply.results()) ASSERT_EQ(r.code(), 0) << r.message();
  EXPECT_EQ(Device("nic0").mappings(), 1u + kMaxBatchOps);
  EXPECT_EQ(daemon_.Stop(), 0);
}

// Finding: a 2 GiB scattered AllocBuffer allocated its pages and then sent a
// run list no default client receives: an orphaned buffer. Now a buffer
// whose runs could not be listed in a reply is refused before any page is
// taken, and one at the limit is described in full.
TEST_F(LimitsTest, ABufferWhoseRunListCouldNotFitIsRefusedBeforeAllocating) {
  ASSERT_NO_FATAL_FAILURE(Start({"--quota_buffer_bytes=4294967296"}));
  const std::string before = State();
  v1::AllocBufferRequest r;
  r.set_device("nic0");
  r.set_size_bytes(uint64_t{2} << 30);
  r.set_placement(v1::PLACEMENT_SCATTERED);
  v1::AllocBufferResponse out;
  grpc::ClientContext ctx;
  ctx.AddMetadata("iommu-request-id", "limits-buffer-1");
  grpc::Status s = stubs_->memory->AllocBuffer(&ctx, r, &out);
  EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_TRUE(Contains(s.error_message(), "size_bytes=0x80000000")) << s.error_message();
  EXPECT_TRUE(Contains(s.error_message(),
                       "up to 524288 physical runs, more than "
                       "--max_buffer_runs=131072"))
      << s.error_message();
  EXPECT_EQ(State(), before);  // no page, no buffer, no quota charge

  // The same request id then runs a smaller request: nothing was recorded.
  r.set_size_bytes(4096);
  grpc::ClientContext retry;
  retry.AddMetadata("iommu-request-id", "limits-buffer-1");
  s = stubs_->memory->AllocBuffer(&retry, r, &out);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(out.buffer().runs_size(), 1);

  // At the limit the run list fits in a default client's 4 MiB, and in the
  // state store: the buffer's record and, under a request id, its reply
  // (answered again after a restart, not applied twice).
  r.set_size_bytes(uint64_t{kMaxBufferRuns} * 4096);
  grpc::ClientContext at_limit;
  at_limit.AddMetadata("iommu-request-id", "limits-buffer-2");
  s = stubs_->memory->AllocBuffer(&at_limit, r, &out);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(out.buffer().runs_size(), kMaxBufferRuns);
  ASSERT_EQ(daemon_.Stop(), 0);
  ASSERT_TRUE(daemon_.Restart()) << daemon_.log();
  stubs_ = std::make_unique<Stubs>(FreshChannel(daemon_.unix_target()));
  grpc::ClientContext replay;
  replay.AddMetadata("iommu-request-id", "limits-buffer-2");
  v1::AllocBufferResponse again;
  s = stubs_->memory->AllocBuffer(&replay, r, &again);
  ASSERT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  EXPECT_EQ(again.buffer().buffer_id(), out.buffer().buffer_id());
  EXPECT_EQ(again.buffer().runs_size(), kMaxBufferRuns);
  EXPECT_EQ(Device("nic0").buffers(), 2u);
  EXPECT_EQ(daemon_.Stop(), 0);
}

TEST_F(LimitsTest, SegmentsAndAccessesAreBoundedBeforeAnyWork) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const uint64_t buffer =
      AllocBuffer("nic0", uint64_t{kMaxSgSegments + 1} * 4096, v1::PLACEMENT_SCATTERED);
  const std::string before = State();
  v1::MapSgRequest sg;
  sg.set_device("nic0");
  sg.set_mode(v1::SG_MODE_DMA_API);
  sg.set_direction(v1::DMA_DIRECTION_TO_DEVICE);
  for (int i = 0; i <= kMaxSgSegments; ++i) *sg.add_segments() = BufferRef(buffer, i * 4096, 4096);
  v1::MapSgResponse mapped;
  grpc::Status s = stubs_->dma->MapSg(Ctx().get(), sg, &mapped);
  EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(s.error_message(), "segments: 65537 entries, more than --max_sg_segments=65536");

  // Accesses that would each fault (nothing is mapped there): refused
  // before the first, so no fault is recorded.
  v1::TranslateBatchRequest accesses;
  for (int i = 0; i <= kMaxTranslateAccesses; ++i) {
    v1::TranslateRequest* a = accesses.add_accesses();
    a->set_device("nic0");
    a->set_iova(0x7000'0000 + uint64_t(i) * 4096);
    a->set_length_bytes(4);
    a->set_access(v1::ACCESS_KIND_READ);
  }
  v1::TranslateBatchResponse translated;
  s = stubs_->devices->TranslateBatch(Ctx().get(), accesses, &translated);
  EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(s.error_message(), "accesses: 16385 entries, more than --max_translate_accesses=16384");
  // Few accesses, but answers (a piece per page) that could not fit.
  accesses.mutable_accesses()->DeleteSubrange(4, accesses.accesses_size() - 4);
  for (v1::TranslateRequest& a : *accesses.mutable_accesses())
    a.set_length_bytes(uint64_t{1} << 30);
  s = stubs_->devices->TranslateBatch(Ctx().get(), accesses, &translated);
  EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(Contains(s.error_message(), "accesses=0x4: the reply could take"));
  EXPECT_TRUE(Contains(s.error_message(), "--max_message_bytes=4194304")) << s.error_message();
  v1::TranslateResponse one;
  s = stubs_->devices->Translate(Ctx().get(), accesses.accesses(0), &one);
  EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(Contains(s.error_message(), "length_bytes=0x40000000")) << s.error_message();
  EXPECT_EQ(State(), before);  // no mapping, no fault record, no IOTLB fill

  // At the limit: mapped, one DMA segment per segment in the reply, and its
  // record in the state store (it survives a restart).
  sg.mutable_segments()->RemoveLast();
  s = stubs_->dma->MapSg(Ctx().get(), sg, &mapped);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(mapped.segments_size(), kMaxSgSegments);
  ASSERT_EQ(daemon_.Stop(), 0);
  ASSERT_TRUE(daemon_.Restart()) << daemon_.log();
  stubs_ = std::make_unique<Stubs>(FreshChannel(daemon_.unix_target()));
  EXPECT_EQ(Device("nic0").mappings(), 1u);
  EXPECT_EQ(daemon_.Stop(), 0);
}

// Finding: a 10 MiB device name came back whole in the error trailer (which
// the client then refused) and went twice into the log (21 MB for one
// request). Now strings are refused past --max_string_bytes before parsing,
// and whatever a reply or a log line echoes of a request is bounded.
TEST_F(LimitsTest, LongStringsAreRefusedAndNeverEchoedWhole) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const auto log_bytes = [&] { return daemon_.log().size(); };
  const size_t log_before = log_bytes();
  for (const size_t length : {size_t{10} << 20, size_t{3} << 20}) {
    SCOPED_TRACE(length);
    v1::MapRequest r;
    r.set_device(std::string(length, 'd'));
    r.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
    v1::MapResponse out;
    const grpc::Status s = stubs_->dma->Map(Ctx().get(), r, &out);
    EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_LT(s.error_message().size(), 1024u);
    if (length < kMaxMessageBytes) {
      EXPECT_EQ(s.error_message(), "device: 3145728 bytes, more than --max_string_bytes=256");
    }
  }
  // Within the limit but unknown: the echo is cut, marked with its length.
  v1::MapRequest r;
  r.set_device(std::string(200, 'e'));
  r.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
  *r.mutable_mem() = BufferRef(1, 0, 4096);
  v1::MapResponse out;
  grpc::Status s = stubs_->dma->Map(Ctx().get(), r, &out);
  EXPECT_EQ(s.error_code(), StatusCode::NOT_FOUND);
  EXPECT_EQ(s.error_message(),
            "device=\"" + std::string(128, 'e') + "\"...(200 bytes): no such device");
  // In a Batch message, the path names the operation.
  v1::BatchRequest batch;
  batch.set_device("nic0");
  batch.add_ops()->mutable_unmap();
  batch.add_ops()->mutable_unmap()->set_device(std::string(1 << 20, 'b'));
  const BatchOutcome b = BatchOnce(*stubs_, batch);
  EXPECT_EQ(b.status.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(Contains(b.status.error_message(),
                       "ops[1].unmap.device: 1048576 bytes, more than --max_string_bytes=256"))
      << b.status.error_message();
  // Three refusals and a miss: a few lines of log, not megabytes.
  EXPECT_LT(log_bytes() - log_before, size_t{8} << 10);
  EXPECT_EQ(daemon_.Stop(), 0);
}

// Finding: an unparseable request answered UNIMPLEMENTED with no message,
// garbage on a Batch stream ended it OK with no reply, and libprotobuf wrote
// to stderr in a format of its own.
TEST_F(LimitsTest, UnparseableRequestsAreInvalidArgumentNamingTheMethod) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const auto channel = Insecure(daemon_.unix_target());
  grpc::Status s = RawUnary(channel, "/iommu.v1.Dma/Map", std::string("\xff\xff\xff\xff", 4));
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(s.error_message(),
                       "iommu.v1.Dma/Map: the request could not be parsed as iommu.v1.MapRequest"))
      << s.error_message();
  // Well-formed on the wire, but a proto3 string that is not UTF-8:
  // protobuf's reason is in the status, and nothing reaches stderr outside
  // the daemon's log format.
  const std::string bad_utf8("\x0a\x02\xc3\x28", 4);  // device (field 1) = C3 28
  s = RawUnary(channel, "/iommu.v1.Memory/GetBuffer", bad_utf8);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(s.error_message(),
                       "iommu.v1.Memory/GetBuffer: the request could not be "
                       "parsed as iommu.v1.GetBufferRequest"))
      << s.error_message();
  EXPECT_TRUE(Contains(s.error_message(), "UTF-8")) << s.error_message();
  s = RawUnary(channel, "/iommu.v1.Devices/WatchFaults", std::string("\x0a\x05", 2));
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_TRUE(Contains(s.error_message(), "iommu.v1.Devices/WatchFaults")) << s.error_message();
  // A method iommud does not have is still UNIMPLEMENTED.
  EXPECT_EQ(RawUnary(channel, "/iommu.v1.Dma/NoSuchMethod", "").error_code(),
            StatusCode::UNIMPLEMENTED);

  // A Batch stream: the first message is answered, the garbage after it
  // ends the stream naming it.
  const uint64_t buffer = AllocBuffer("nic0", 4096, v1::PLACEMENT_CONTIGUOUS);
  std::vector<std::string> replies;
  s = RawStream(channel, "/iommu.v1.Dma/Batch",
                {Maps("nic0", buffer, 2).SerializeAsString(), std::string("\x12\x7f\x01", 3)},
                &replies);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(s.error_message(), "iommu.v1.Dma/Batch: message 2 of the stream"))
      << s.error_message();
  EXPECT_TRUE(Contains(s.error_message(), "could not be parsed as iommu.v1.BatchRequest"))
      << s.error_message();
  ASSERT_EQ(replies.size(), 1u);
  v1::BatchResponse first;
  ASSERT_TRUE(first.ParseFromString(replies[0]));
  EXPECT_EQ(first.results_size(), 2);

  const std::string log = daemon_.log();
  EXPECT_FALSE(Contains(log, "[libprotobuf")) << log;
  EXPECT_TRUE(Contains(log, "rpc=iommu.v1.Memory/GetBuffer")) << log;
  EXPECT_EQ(daemon_.Stop(), 0);
}

// Limits that contradict each other are refused at start, naming the flags:
// a reply they allow could not be sent, or not recorded in the state store.
TEST_F(LimitsTest, LimitsWhoseRepliesCouldNotFitAreRefusedAtStart) {
  for (const auto& [flag, named] : std::vector<std::pair<std::string, std::string>>{
           {"--max_batch_ops=100000", "max_batch_ops=100000: a Batch response could take"},
           {"--max_buffer_runs=1000000", "max_buffer_runs=1000000: a buffer's runs could take"},
           {"--max_message_bytes=67108864",
            "max_message_bytes=67108864: a reply recorded under a request id could take"},
           {"--max_streams_per_device=0", "max_streams_per_device=0: must be at least 1"}}) {
    SCOPED_TRACE(flag);
    DaemonProcess daemon;
    EXPECT_FALSE(daemon.Start({flag}));
    EXPECT_EQ(daemon.exit_code(), 1);
    EXPECT_TRUE(Contains(daemon.log(), named)) << daemon.log();
  }
}

// A device has at most --max_streams_per_device Batch and WatchFaults
// streams, whatever the connections; made-up names buy no slots.
TEST_F(LimitsTest, StreamsPerDeviceAreBoundedAcrossConnections) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const uint64_t buffer = AllocBuffer("nic0", 4096, v1::PLACEMENT_CONTIGUOUS);
  struct Open {
    std::unique_ptr<Stubs> stubs;
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::BatchRequest, v1::BatchResponse>> stream;
  };
  auto open = [&](const std::string& device) {
    auto o = std::make_unique<Open>();
    o->stubs = std::make_unique<Stubs>(Insecure(daemon_.unix_target()));  // a connection each
    o->stream = o->stubs->dma->Batch(&o->ctx);
    v1::BatchResponse reply;
    const bool answered =
        o->stream->Write(Maps(device, device == "nic0" ? buffer : 1, 1)) && o->stream->Read(&reply);
    return std::make_pair(std::move(o), answered);
  };
  std::vector<std::unique_ptr<Open>> held;
  for (int i = 0; i < kMaxStreamsPerDevice; ++i) {
    auto [o, answered] = open("nic0");
    ASSERT_TRUE(answered) << i;
    held.push_back(std::move(o));
  }
  auto [fourth, answered] = open("nic0");
  EXPECT_FALSE(answered);
  fourth->stream->WritesDone();
  grpc::Status s = fourth->stream->Finish();
  EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(s.error_message(),
            "device=\"nic0\": the device has 16 Batch and WatchFaults streams open, the "
            "--max_streams_per_device=16 limit; close one first");
  // Watchers count too.
  v1::WatchFaultsRequest wf;
  wf.set_device("nic0");
  grpc::ClientContext watch_ctx;
  watch_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto watch = stubs_->devices->WatchFaults(&watch_ctx, wf);
  v1::FaultEvent event;
  EXPECT_FALSE(watch->Read(&event));
  EXPECT_EQ(watch->Finish().error_code(), StatusCode::RESOURCE_EXHAUSTED);
  // Another device has slots of its own; a made-up one is NOT_FOUND.
  auto [gpu, gpu_answered] = open("gpu0");
  EXPECT_TRUE(gpu_answered);
  auto [ghost, ghost_answered] = open("ghost-device");
  EXPECT_FALSE(ghost_answered);
  ghost->stream->WritesDone();
  EXPECT_EQ(ghost->stream->Finish().error_code(), StatusCode::NOT_FOUND);
  // A closed stream gives its slot back.
  held[0]->stream->WritesDone();
  ASSERT_TRUE(held[0]->stream->Finish().ok());
  auto [again, again_answered] = open("nic0");
  EXPECT_TRUE(again_answered);
  held[0] = std::move(again);
  held.push_back(std::move(gpu));
  for (const auto& o : held) {
    o->stream->WritesDone();
    EXPECT_TRUE(o->stream->Finish().ok());
  }
  EXPECT_EQ(daemon_.Stop(), 0);
}

// A minimal HTTP/2 client over the daemon's Unix socket, to see what gRPC's
// own clients obey: the server's SETTINGS, and what it does to a client
// that opens more streams than they allow.
class RawHttp2 {
 public:
  explicit RawHttp2(const std::string& socket_path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_path.c_str(), sizeof(addr.sun_path) - 1);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    timeval timeout{.tv_sec = 10, .tv_usec = 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    if (connected_) Send(std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24) + Frame(4, 0, 0, ""));
  }
  ~RawHttp2() { close(fd_); }
  bool connected() const { return connected_; }

  struct Frame_ {
    uint8_t type = 0, flags = 0;
    uint32_t stream = 0;
    std::string payload;
  };
  // The next frame; type 0xff when the connection ended.
  Frame_ Read() {
    Frame_ f;
    std::string header = ReadN(9);
    if (header.size() < 9) {
      f.type = 0xff;
      return f;
    }
    const uint32_t length =
        (uint8_t(header[0]) << 16) | (uint8_t(header[1]) << 8) | uint8_t(header[2]);
    f.type = uint8_t(header[3]);
    f.flags = uint8_t(header[4]);
    f.stream = ((uint8_t(header[5]) & 0x7f) << 24) | (uint8_t(header[6]) << 16) |
               (uint8_t(header[7]) << 8) | uint8_t(header[8]);
    f.payload = ReadN(length);
    return f;
  }
  void AckSettings() { Send(Frame(4, 1, 0, "")); }
  void Ping() { Send(Frame(6, 0, 0, std::string(8, 'p'))); }
  // HEADERS opening a gRPC call of `path` (literal fields, no Huffman).
  void OpenCall(uint32_t stream, const std::string& path) {
    std::string block;
    auto field = [&](const std::string& name, const std::string& value) {
      block += '\0';
      block += char(name.size());
      block += name;
      block += char(value.size());
      block += value;
    };
    field(":method", "POST");
    field(":scheme", "http");
    field(":path", path);
    field(":authority", "localhost");
    field("content-type", "application/grpc");
    field("te", "trailers");
    Send(Frame(1, 4 /* END_HEADERS */, stream, block));
  }

 private:
  static std::string Frame(uint8_t type, uint8_t flags, uint32_t stream,
                           const std::string& payload) {
    std::string f;
    f += char(payload.size() >> 16);
    f += char(payload.size() >> 8);
    f += char(payload.size());
    f += char(type);
    f += char(flags);
    f += char(stream >> 24);
    f += char(stream >> 16);
    f += char(stream >> 8);
    f += char(stream);
    return f + payload;
  }
  void Send(const std::string& bytes) { (void)!write(fd_, bytes.data(), bytes.size()); }
  std::string ReadN(size_t n) {
    std::string out(n, '\0');
    size_t got = 0;
    while (got < n) {
      const ssize_t r = read(fd_, out.data() + got, n - got);
      if (r <= 0) break;
      got += size_t(r);
    }
    out.resize(got);
    return out;
  }
  int fd_ = -1;
  bool connected_ = false;
};

// --max_streams_per_connection is advertised in the HTTP/2 SETTINGS (gRPC
// clients queue calls beyond it), and a client that ignores it loses the
// connection: gRPC treats a stream beyond the limit as a protocol error.
TEST_F(LimitsTest, StreamsPerConnectionAreAdvertisedAndEnforced) {
  ASSERT_NO_FATAL_FAILURE(Start());
  RawHttp2 h2(daemon_.unix_target().substr(5));
  ASSERT_TRUE(h2.connected());
  RawHttp2::Frame_ f = h2.Read();
  while (f.type != 4 && f.type != 0xff) f = h2.Read();  // the server's SETTINGS
  ASSERT_EQ(f.type, 4);
  int64_t max_streams = -1;
  for (size_t at = 0; at + 6 <= f.payload.size(); at += 6) {
    const uint16_t id = (uint8_t(f.payload[at]) << 8) | uint8_t(f.payload[at + 1]);
    const uint32_t value = (uint32_t(uint8_t(f.payload[at + 2])) << 24) |
                           (uint8_t(f.payload[at + 3]) << 16) | (uint8_t(f.payload[at + 4]) << 8) |
                           uint8_t(f.payload[at + 5]);
    if (id == 3) max_streams = value;  // SETTINGS_MAX_CONCURRENT_STREAMS
  }
  ASSERT_EQ(max_streams, kMaxStreamsPerConnection);
  h2.AckSettings();
  // As many calls as allowed: all stay open. The server answers frames in
  // order, so its PING ack says it has seen every HEADERS.
  uint32_t stream = 1;
  for (int i = 0; i < kMaxStreamsPerConnection; ++i, stream += 2) {
    h2.OpenCall(stream, "/iommu.v1.Dma/Batch");
  }
  h2.Ping();
  bool acked = false;
  while (!acked) {
    f = h2.Read();
    ASSERT_NE(f.type, 0xff) << "the connection ended";
    EXPECT_NE(f.type, 3) << "RST_STREAM on stream " << f.stream;
    EXPECT_NE(f.type, 7) << "GOAWAY";
    acked = f.type == 6 && (f.flags & 1) != 0;
  }
  // One more: the connection ends, its calls with it.
  h2.OpenCall(stream, "/iommu.v1.Dma/Batch");
  int frames = 0;
  while (f.type != 0xff && frames++ < 10 * kMaxStreamsPerConnection) f = h2.Read();
  EXPECT_EQ(f.type, 0xff) << "the connection is still up";
  EXPECT_EQ(daemon_.Stop(), 0);
}

}  // namespace
}  // namespace iommu::testing
