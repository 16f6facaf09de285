// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_TESTS_TEST_CERTS_H_
#define IOMMU_TESTS_TEST_CERTS_H_

// The throw-away CA and certificates of tests/gen_certs.sh, made once per
// test process, and TLS channels that verify the daemon with them. For the
// integration tests (GEN_CERTS_PATH is defined by their build target).

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "tests/daemon_harness.h"

namespace iommu::testing {

// The directory holding ca.crt, server.{crt,key} and one {crt,key} pair per
// client identity (see gen_certs.sh).
inline const std::string& TestCerts() {
  static const std::string* dir = [] {
    auto* d = new std::string(MakeTempDir());
    const std::string cmd = std::string("bash ") + GEN_CERTS_PATH + " " + *d;
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return d;
  }();
  return *dir;
}

// A TLS channel to `target` that checks the daemon's certificate (name
// iommud.test) and presents `client`'s certificate, or none when empty.
inline std::shared_ptr<grpc::Channel> TlsChannel(const std::string& target,
                                                 const std::string& client = "") {
  const std::string& d = TestCerts();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadAll(d + "/ca.crt");
  if (!client.empty()) {
    ssl.pem_private_key = ReadAll(d + "/" + client + ".key");
    ssl.pem_cert_chain = ReadAll(d + "/" + client + ".crt");
  }
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("iommud.test");
  return grpc::CreateCustomChannel(target, grpc::SslCredentials(ssl), args);
}

}  // namespace iommu::testing

#endif  // IOMMU_TESTS_TEST_CERTS_H_
