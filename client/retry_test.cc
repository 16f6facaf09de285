// SPDX-License-Identifier: Apache-2.0
// The SDK's retries against an in-process fake daemon (no iommud): which
// calls carry a request id and that every retry reuses it, that retries end
// at the deadline or max_attempts, that a retry waits for a restarted server,
// and that a Batch stream broken by UNAVAILABLE writes its unanswered
// messages again, with their sequences and ids, on a new stream. The fake
// answers a repeated Batch id from its record, as the daemon does, so the
// tests also see each message applied once.
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/batch.h"
#include "client/client.h"
#include "client/request_id.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "iommu/v1/dma.grpc.pb.h"

namespace iommu::client {
namespace {

bool IsRequestId(const std::string& id) {
  return id.size() == internal::kRequestIdChars &&
         id.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// What the fake saw and how it is to answer; shared by the fake's restarts.
struct Recorder {
  absl::Mutex mu;
  // Unary calls: method and request id ("" when none) of every attempt.
  std::vector<std::pair<std::string, std::string>> attempts ABSL_GUARDED_BY(mu);
  int unavailable ABSL_GUARDED_BY(mu) = 0;  // UNAVAILABLE answers still owed
  grpc::StatusCode fail_with ABSL_GUARDED_BY(mu) = grpc::StatusCode::OK;

  // Batch: the messages each stream read, in order.
  std::vector<std::vector<v1::BatchRequest>> streams ABSL_GUARDED_BY(mu);
  // The first stream answers only its first `answer_first` messages and,
  // having read `end_first_after` of them, ends with `end_first_with`.
  int answer_first ABSL_GUARDED_BY(mu) = 1 << 30;
  int end_first_after ABSL_GUARDED_BY(mu) = 1 << 30;
  grpc::StatusCode end_first_with ABSL_GUARDED_BY(mu) = grpc::StatusCode::UNAVAILABLE;
  bool refuse_later_streams ABSL_GUARDED_BY(mu) = false;  // end them at once, UNAVAILABLE
  // The daemon's side of the protocol: each op applied gets the next
  // number; a message whose id was seen is answered from `replies`.
  uint64_t applied_ops ABSL_GUARDED_BY(mu) = 0;
  int replayed ABSL_GUARDED_BY(mu) = 0;
  std::map<std::string, v1::BatchResponse> replies ABSL_GUARDED_BY(mu);

  v1::BatchResponse Apply(const v1::BatchRequest& request) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (auto it = replies.find(request.request_id()); it != replies.end()) {
      ++replayed;
      return it->second;
    }
    v1::BatchResponse response;
    response.set_sequence(request.sequence());
    for (int i = 0; i < request.ops_size(); ++i)
      response.add_results()->mutable_translate()->set_phys_addr(++applied_ops);
    if (!request.request_id().empty()) replies[request.request_id()] = response;
    return response;
  }
};

class FakeDma final : public v1::Dma::Service {
 public:
  explicit FakeDma(Recorder* rec) : rec_(rec) {}

  grpc::Status Map(grpc::ServerContext* context, const v1::MapRequest*,
                   v1::MapResponse* response) override {
    response->set_dma_addr(0x1000);
    return Record("Map", context);
  }
  grpc::Status Sync(grpc::ServerContext* context, const v1::SyncRequest*,
                    v1::SyncResponse*) override {
    return Record("Sync", context);
  }

  grpc::Status Batch(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::BatchResponse, v1::BatchRequest>* stream) override {
    size_t index;
    {
      absl::MutexLock lock(&rec_->mu);
      index = rec_->streams.size();
      rec_->streams.emplace_back();
      if (index > 0 && rec_->refuse_later_streams)
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake: not serving");
    }
    v1::BatchRequest request;
    for (int read = 1; stream->Read(&request); ++read) {
      v1::BatchResponse response;
      bool answer = true;
      grpc::StatusCode end = grpc::StatusCode::OK;
      {
        absl::MutexLock lock(&rec_->mu);
        rec_->streams[index].push_back(request);
        response = rec_->Apply(request);
        if (index == 0) {
          answer = read <= rec_->answer_first;
          if (read == rec_->end_first_after) end = rec_->end_first_with;
        }
      }
      if (answer && !stream->Write(response)) break;
      if (end != grpc::StatusCode::OK) return grpc::Status(end, "fake: stream ended");
    }
    return grpc::Status::OK;
  }

 private:
  grpc::Status Record(const std::string& method, grpc::ServerContext* context) {
    std::string id;
    const auto& metadata = context->client_metadata();
    if (auto it = metadata.find(internal::kRequestIdMetadataKey); it != metadata.end())
      id.assign(it->second.data(), it->second.size());
    absl::MutexLock lock(&rec_->mu);
    rec_->attempts.emplace_back(method, id);
    if (rec_->unavailable > 0) {
      --rec_->unavailable;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake: try again");
    }
    if (rec_->fail_with != grpc::StatusCode::OK) return grpc::Status(rec_->fail_with, "fake: no");
    return grpc::Status::OK;
  }

  Recorder* rec_;
};

// The fake on a Unix socket of its own; Stop() and Start() again is a
// daemon restart on the same address.
class FakeServer {
 public:
  explicit FakeServer(Recorder* rec) : rec_(rec) {
    std::string dir = (std::filesystem::temp_directory_path() / "iommu-fake-XXXXXX").string();
    dir_ = mkdtemp(dir.data());
  }
  ~FakeServer() {
    Stop();
    std::remove(socket().c_str());
    rmdir(dir_.c_str());
  }
  std::string socket() const { return dir_ + "/fake.sock"; }
  std::string target() const { return "unix:" + socket(); }

  void Start() {
    std::remove(socket().c_str());
    service_ = std::make_unique<FakeDma>(rec_);
    grpc::ServerBuilder builder;
    builder.AddListeningPort(target(), grpc::InsecureServerCredentials());
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  void Stop() {
    if (server_ == nullptr) return;
    server_->Shutdown(std::chrono::system_clock::now());  // cancels what is in flight
    server_->Wait();
    server_.reset();
    service_.reset();
  }

 private:
  Recorder* rec_;
  std::string dir_;
  std::unique_ptr<FakeDma> service_;
  std::unique_ptr<grpc::Server> server_;
};

class RetryTest : public ::testing::Test {
 protected:
  void SetUp() override { server_.Start(); }

  Client Connect(absl::Duration deadline = absl::Seconds(10), int max_attempts = 30) {
    Options o;
    o.target = server_.target();
    o.device = "nic0";
    o.default_deadline = deadline;
    o.retry = {.max_attempts = max_attempts,
               .initial_backoff = absl::Milliseconds(5),
               .max_backoff = absl::Milliseconds(50)};
    absl::StatusOr<Client> c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  }

  std::vector<std::pair<std::string, std::string>> Attempts() {
    absl::MutexLock lock(&rec_.mu);
    return rec_.attempts;
  }
  std::vector<std::vector<v1::BatchRequest>> Streams() {
    absl::MutexLock lock(&rec_.mu);
    return rec_.streams;
  }

  static v1::MapRequest AMap() {
    v1::MapRequest map;
    map.mutable_mem()->set_buffer_id(1);
    map.mutable_mem()->set_length_bytes(4096);
    return map;
  }

  Recorder rec_;
  FakeServer server_{&rec_};
};

TEST_F(RetryTest, MutatingCallSendsOneRequestIdWithEveryAttempt) {
  Client client = Connect();
  {
    absl::MutexLock lock(&rec_.mu);
    rec_.unavailable = 3;
  }
  ASSERT_TRUE(client.Map(AMap()).ok());
  ASSERT_TRUE(client.Map(AMap()).ok());
  const auto attempts = Attempts();
  ASSERT_EQ(attempts.size(), 5u);
  const std::string first = attempts[0].second;
  EXPECT_TRUE(IsRequestId(first)) << first;
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(attempts[i].first, "Map");
    EXPECT_EQ(attempts[i].second, first) << "attempt " << i;
  }
  // The next call is another request: a fresh id.
  EXPECT_TRUE(IsRequestId(attempts[4].second));
  EXPECT_NE(attempts[4].second, first);
}

TEST_F(RetryTest, ReadsAreRetriedWithoutARequestId) {
  Client client = Connect();
  {
    absl::MutexLock lock(&rec_.mu);
    rec_.unavailable = 2;
  }
  ASSERT_TRUE(client.Sync().ok());
  const auto attempts = Attempts();
  ASSERT_EQ(attempts.size(), 3u);
  for (const auto& [method, id] : attempts) {
    EXPECT_EQ(method, "Sync");
    EXPECT_EQ(id, "");
  }
}

TEST_F(RetryTest, OnlyUnavailableIsRetried) {
  Client client = Connect();
  {
    absl::MutexLock lock(&rec_.mu);
    rec_.fail_with = grpc::StatusCode::FAILED_PRECONDITION;
  }
  EXPECT_EQ(client.Map(AMap()).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Attempts().size(), 1u);
}

TEST_F(RetryTest, MaxAttemptsCapsTheRetries) {
  Client client = Connect(absl::Seconds(10), /*max_attempts=*/3);
  {
    absl::MutexLock lock(&rec_.mu);
    rec_.unavailable = 1000;
  }
  const absl::Status s = client.Map(AMap()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "fake: try again");
  EXPECT_EQ(Attempts().size(), 3u);
}

TEST_F(RetryTest, RetriesEndAtTheCallsDeadline) {
  Client client = Connect(absl::Milliseconds(400), /*max_attempts=*/1000);
  {
    absl::MutexLock lock(&rec_.mu);
    rec_.unavailable = 1 << 30;
  }
  const absl::Time start = absl::Now();
  EXPECT_EQ(client.Map(AMap()).status().code(), absl::StatusCode::kUnavailable);
  const absl::Duration took = absl::Now() - start;
  // Ended by the deadline, not by the attempt cap (generous: a loaded
  // machine may run late, but never retries on for seconds).
  EXPECT_LT(took, absl::Seconds(3));
  EXPECT_GT(took, absl::Milliseconds(200));
  EXPECT_GT(Attempts().size(), 5u);
}

// A daemon restart: the call's first attempt fails at once, the next waits
// for the server to listen again, all under one id.
TEST_F(RetryTest, ARetryWaitsForTheServerToComeBack) {
  Client client = Connect(absl::Seconds(10));
  ASSERT_TRUE(client.Sync().ok());  // connected
  server_.Stop();
  std::thread restart([&] {
    absl::SleepFor(absl::Milliseconds(700));
    server_.Start();
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::MapResponse> mapped = client.Map(AMap());
  const absl::Duration took = absl::Now() - start;
  restart.join();
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(mapped->dma_addr(), 0x1000u);
  // Found well within the call's 10 s deadline (the channel's reconnect
  // backoff is at most 1 s; generous for a loaded machine).
  EXPECT_LT(took, absl::Seconds(8));
  const auto attempts = Attempts();
  ASSERT_EQ(attempts.size(), 2u);  // Sync, then the Map that reached the new server
  EXPECT_TRUE(IsRequestId(attempts[1].second));
}

TEST_F(RetryTest, AServerThatStaysDownEndsInUnavailableAtTheDeadline) {
  Client client = Connect(absl::Milliseconds(800));
  ASSERT_TRUE(client.Sync().ok());
  server_.Stop();
  const absl::Time start = absl::Now();
  const absl::Status s = client.Map(AMap()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("still unreachable at the deadline"), std::string::npos) << s;
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(700));
}

// The first stream reads three messages, applies them, answers only the
// first and breaks with UNAVAILABLE: the second and third are written again
// on a new stream, byte for byte (same sequence and id), and answered from
// the record, so every op was applied once and every future has the result
// of that one application.
TEST_F(RetryTest, BatchWritesUnansweredMessagesAgainOnANewStream) {
  {
    absl::MutexLock lock(&rec_.mu);
    rec_.answer_first = 1;
    rec_.end_first_after = 3;
  }
  Client client = Connect();
  absl::StatusOr<std::unique_ptr<BatchStream>> opened = BatchStream::Open(client);
  ASSERT_TRUE(opened.ok()) << opened.status();
  BatchStream& batch = **opened;
  std::vector<BatchStream::ResponseFuture> futures;
  for (int m = 0; m < 3; ++m) {
    batch.AddTranslate(0x1000 * (m + 1), 4096, v1::ACCESS_KIND_READ);
    batch.AddMap(7, 4096 * m, 4096, v1::DMA_DIRECTION_TO_DEVICE);
    futures.push_back(batch.Send());
  }
  std::vector<uint64_t> phys;
  for (BatchStream::ResponseFuture& f : futures) {
    absl::StatusOr<BatchReply> reply = f.get();
    ASSERT_TRUE(reply.ok()) << reply.status();
    ASSERT_EQ(reply->results_size(), 2);
    for (const v1::BatchResult& r : reply->results()) phys.push_back(r.translate().phys_addr());
  }
  EXPECT_EQ(phys, (std::vector<uint64_t>{1, 2, 3, 4, 5, 6}));
  // A message after the reopen goes on the new stream.
  batch.AddUnmap(0x2000);
  absl::StatusOr<BatchReply> fourth = batch.Flush();
  ASSERT_TRUE(fourth.ok()) << fourth.status();
  EXPECT_EQ(fourth->sequence(), 4u);
  EXPECT_EQ(fourth->results(0).translate().phys_addr(), 7u);
  EXPECT_TRUE(batch.Close().ok());

  const auto streams = Streams();
  ASSERT_EQ(streams.size(), 2u);
  ASSERT_EQ(streams[0].size(), 3u);
  ASSERT_EQ(streams[1].size(), 3u);
  std::set<std::string> ids;
  for (size_t m = 0; m < 3; ++m) {
    EXPECT_EQ(streams[0][m].sequence(), m + 1);
    EXPECT_TRUE(IsRequestId(streams[0][m].request_id())) << streams[0][m].request_id();
    EXPECT_EQ(streams[0][m].device(), "nic0");
    ids.insert(streams[0][m].request_id());
  }
  EXPECT_EQ(streams[1][0].SerializeAsString(), streams[0][1].SerializeAsString());
  EXPECT_EQ(streams[1][1].SerializeAsString(), streams[0][2].SerializeAsString());
  EXPECT_EQ(streams[1][2].sequence(), 4u);
  ids.insert(streams[1][2].request_id());
  EXPECT_EQ(ids.size(), 4u);  // a fresh id per message
  absl::MutexLock lock(&rec_.mu);
  EXPECT_EQ(rec_.replayed, 2);
  EXPECT_EQ(rec_.applied_ops, 7u);
}

// A daemon restart under a Batch stream: the server goes away with messages
// unanswered, and the stream is reopened once it listens again.
TEST_F(RetryTest, BatchRidesOutAServerRestart) {
  {
    absl::MutexLock lock(&rec_.mu);
    rec_.answer_first = 0;  // reads, applies, never answers on the first stream
  }
  Client client = Connect();
  absl::StatusOr<std::unique_ptr<BatchStream>> opened = BatchStream::Open(client);
  ASSERT_TRUE(opened.ok()) << opened.status();
  BatchStream& batch = **opened;
  batch.AddTranslate(0x1000, 4096, v1::ACCESS_KIND_READ);
  BatchStream::ResponseFuture f = batch.Send();
  auto first_read = [&] {
    absl::MutexLock lock(&rec_.mu);
    return !rec_.streams.empty() && !rec_.streams[0].empty();
  };
  while (!first_read()) absl::SleepFor(absl::Milliseconds(5));
  server_.Stop();
  absl::SleepFor(absl::Milliseconds(500));
  server_.Start();
  absl::StatusOr<BatchReply> reply = f.get();
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->results(0).translate().phys_addr(), 1u);  // replayed, not applied again
  EXPECT_TRUE(batch.Close().ok());
  absl::MutexLock lock(&rec_.mu);
  EXPECT_EQ(rec_.applied_ops, 1u);
  EXPECT_EQ(rec_.replayed, 1);
}

TEST_F(RetryTest, BatchFailsOutstandingMessagesOnOtherErrors) {
  {
    absl::MutexLock lock(&rec_.mu);
    rec_.answer_first = 0;
    rec_.end_first_after = 2;
    rec_.end_first_with = grpc::StatusCode::PERMISSION_DENIED;
  }
  Client client = Connect();
  absl::StatusOr<std::unique_ptr<BatchStream>> opened = BatchStream::Open(client);
  ASSERT_TRUE(opened.ok());
  BatchStream& batch = **opened;
  batch.AddUnmap(0x1000);
  BatchStream::ResponseFuture f1 = batch.Send();
  batch.AddUnmap(0x2000);
  BatchStream::ResponseFuture f2 = batch.Send();
  EXPECT_EQ(f1.get().status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(f2.get().status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(batch.Flush().status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(batch.Close().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Streams().size(), 1u);  // not reopened
}

TEST_F(RetryTest, BatchGivesUpWhenNoStreamCanBeReopenedByTheDeadline) {
  {
    absl::MutexLock lock(&rec_.mu);
    rec_.answer_first = 0;
    rec_.end_first_after = 1;
    rec_.refuse_later_streams = true;
  }
  Client client = Connect(absl::Milliseconds(600));
  absl::StatusOr<std::unique_ptr<BatchStream>> opened = BatchStream::Open(client);
  ASSERT_TRUE(opened.ok());
  BatchStream& batch = **opened;
  batch.AddUnmap(0x1000);
  const absl::Time start = absl::Now();
  const absl::Status s = batch.Flush().status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  // Given up before a reopen or while waiting for the daemon, by the deadline.
  EXPECT_NE(s.message().find("within 600ms"), std::string::npos) << s;
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(450));
  EXPECT_GT(Streams().size(), 2u);  // reopened with backoff until then
  EXPECT_EQ(batch.Flush().status(), s);
  EXPECT_EQ(batch.Close(), s);
}

TEST_F(RetryTest, BatchIsNotReopenedWithRetriesDisabled) {
  {
    absl::MutexLock lock(&rec_.mu);
    rec_.answer_first = 0;
    rec_.end_first_after = 1;
  }
  Client client = Connect(absl::Seconds(10), /*max_attempts=*/1);
  absl::StatusOr<std::unique_ptr<BatchStream>> opened = BatchStream::Open(client);
  ASSERT_TRUE(opened.ok());
  (*opened)->AddUnmap(0x1000);
  EXPECT_EQ((*opened)->Flush().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Streams().size(), 1u);
}

// Close() of a stream broken while idle does not wait out the reopen window,
// and is OK: every message was answered.
TEST_F(RetryTest, ClosingABrokenIdleBatchStreamReturnsAtOnce) {
  {
    absl::MutexLock lock(&rec_.mu);
    rec_.end_first_after = 1;
    rec_.refuse_later_streams = true;
  }
  Client client = Connect(absl::Seconds(10));
  absl::StatusOr<std::unique_ptr<BatchStream>> opened = BatchStream::Open(client);
  ASSERT_TRUE(opened.ok());
  (*opened)->AddUnmap(0x1000);
  ASSERT_TRUE((*opened)->Flush().ok());  // answered, then the stream breaks
  absl::SleepFor(absl::Milliseconds(100));
  const absl::Time start = absl::Now();
  EXPECT_EQ((*opened)->Close().code(), absl::StatusCode::kOk);
  // Not waiting out the 10 s deadline for a reopen.
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

}  // namespace
}  // namespace iommu::client
