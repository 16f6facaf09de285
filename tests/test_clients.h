// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_TESTS_TEST_CLIENTS_H_
#define IOMMU_TESTS_TEST_CLIENTS_H_

// Generated gRPC stubs for every iommu.v1 service on one channel, and small
// helpers for the integration tests.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "iommu/v1/device.grpc.pb.h"
#include "iommu/v1/dma.grpc.pb.h"
#include "iommu/v1/domain.grpc.pb.h"
#include "iommu/v1/memory.grpc.pb.h"
#include "iommu/v1/session.grpc.pb.h"
#include "iommu/v1/stats.grpc.pb.h"

namespace iommu::testing {

struct Stubs {
  explicit Stubs(std::shared_ptr<grpc::Channel> ch)
      : channel(ch),
        dma(v1::Dma::NewStub(ch)),
        memory(v1::Memory::NewStub(ch)),
        domains(v1::Domains::NewStub(ch)),
        devices(v1::Devices::NewStub(ch)),
        sessions(v1::Sessions::NewStub(ch)),
        stats(v1::Stats::NewStub(ch)) {}
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Dma::Stub> dma;
  std::unique_ptr<v1::Memory::Stub> memory;
  std::unique_ptr<v1::Domains::Stub> domains;
  std::unique_ptr<v1::Devices::Stub> devices;
  std::unique_ptr<v1::Sessions::Stub> sessions;
  std::unique_ptr<v1::Stats::Stub> stats;
};

inline std::shared_ptr<grpc::Channel> Insecure(const std::string& target) {
  return grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
}

// A context with a 10 s deadline and optional metadata.
inline std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token = "",
                                                uint64_t session_id = 0) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  if (session_id != 0) ctx->AddMetadata("iommu-session-id", std::to_string(session_id));
  return ctx;
}

inline v1::MemRef BufferRef(uint64_t buffer_id, uint64_t offset, uint64_t length) {
  v1::MemRef m;
  m.set_buffer_id(buffer_id);
  m.set_offset_bytes(offset);
  m.set_length_bytes(length);
  return m;
}

#define EXPECT_CODE(status, code_)                                               \
  do {                                                                           \
    const ::grpc::Status s_ = (status);                                          \
    EXPECT_EQ(s_.error_code(), ::grpc::StatusCode::code_) << s_.error_message(); \
  } while (0)
#define ASSERT_OK(status)                                                  \
  do {                                                                     \
    const ::grpc::Status s_ = (status);                                    \
    ASSERT_TRUE(s_.ok()) << s_.error_code() << ": " << s_.error_message(); \
  } while (0)

}  // namespace iommu::testing

#endif  // IOMMU_TESTS_TEST_CLIENTS_H_
