// SPDX-License-Identifier: Apache-2.0
#include "server/auth.h"

#include <gtest/gtest.h>

#include <fstream>

namespace iommu::server {
namespace {

using Kind = Identity::Kind;

TEST(AuthTest, CallerForUnderEachIdentity) {
  // --auth=none: the request is trusted; empty device is the admin.
  auto none_dev = Authenticator::CallerFor(Identity{}, "nic0", 5);
  ASSERT_TRUE(none_dev.ok());
  EXPECT_EQ(none_dev->device, "nic0");
  EXPECT_FALSE(none_dev->admin);
  EXPECT_EQ(none_dev->session_id, 5u);
  auto none_admin = Authenticator::CallerFor(Identity{}, "", 0);
  ASSERT_TRUE(none_admin.ok());
  EXPECT_TRUE(none_admin->admin);

  // A device credential acts only as itself; empty means itself.
  const Identity nic0{.kind = Kind::kDevice, .device = "nic0"};
  auto self = Authenticator::CallerFor(nic0, "", 0);
  ASSERT_TRUE(self.ok());
  EXPECT_EQ(self->device, "nic0");
  EXPECT_FALSE(self->admin);
  EXPECT_TRUE(Authenticator::CallerFor(nic0, "nic0", 0).ok());
  absl::Status other = Authenticator::CallerFor(nic0, "nvme0", 0).status();
  EXPECT_EQ(other.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(other.message().find("device=\"nvme0\""), absl::string_view::npos) << other;

  // The admin acts as the named device, with admin rights.
  const Identity admin{.kind = Kind::kAdmin};
  auto as_gpu = Authenticator::CallerFor(admin, "gpu0", 0);
  ASSERT_TRUE(as_gpu.ok());
  EXPECT_TRUE(as_gpu->admin);
  EXPECT_EQ(as_gpu->device, "gpu0");
}

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

const absl::flat_hash_set<std::string> kDevices = {"nic0", "nvme0"};

// A syntactically valid certificate and key (their contents are only checked
// to be PEM here; the handshake tests use real ones).
AuthOptions WithServerPem(AuthOptions options) {
  options.tls_cert =
      WriteFile("server.crt", "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n");
  options.tls_key =
      WriteFile("server.key", "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n");
  return options;
}

TEST(AuthTest, TokenFileIsValidated) {
  AuthOptions options = WithServerPem({.mode = AuthMode::kToken});
  EXPECT_EQ(Authenticator::Create(options, kDevices).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.token_file = "/nonexistent/tokens";
  EXPECT_EQ(Authenticator::Create(options, kDevices).status().code(), absl::StatusCode::kNotFound);
  struct Case {
    const char* name;
    const char* text;
    const char* message;  // a substring of the error
  } cases[] = {
      {"extra word", "tok-nic0-0123456789 nic0 extra\n",
       "tokens_extra word:1\": each line must be"},
      {"duplicate", "a-0123456789abcdef nic0\na-0123456789abcdef nvme0\n", ":2\": duplicate token"},
      {"empty", "# nothing\n\n", "holds no token"},
      {"short", "# c\nshort-token nic0\n",
       "tokens_short:2\": the token has 11 characters; a token needs at least 16"},
      {"unknown device", "tok-gpu9-0123456789 gpu9\n",
       "tokens_unknown device:1\": names device \"gpu9\", which is not in the topology"},
  };
  for (const Case& c : cases) {
    options.token_file = WriteFile(std::string("tokens_") + c.name, c.text);
    const absl::Status s = Authenticator::Create(options, kDevices).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << s;
    EXPECT_NE(s.message().find(c.message), absl::string_view::npos) << c.name << ": " << s;
    EXPECT_EQ(s.message().find("short-token"), absl::string_view::npos) << "a token leaked: " << s;
  }
  options.token_file = WriteFile(
      "tokens_ok", "# c\n a-0123456789abcdef nic0  # trailing\nb-0123456789abcdef admin\n");
  EXPECT_TRUE(Authenticator::Create(options, kDevices).ok());
}

TEST(AuthTest, TokenNeedsTheServerCertificateAndNoClientCa) {
  const AuthOptions good = WithServerPem(
      {.mode = AuthMode::kToken, .token_file = WriteFile("tokens", "a-0123456789abcdef nic0\n")});
  ASSERT_TRUE(Authenticator::Create(good, kDevices).ok());
  AuthOptions no_cert = good;
  no_cert.tls_cert.clear();
  absl::Status s = Authenticator::Create(no_cert, kDevices).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "tls_cert=\"\": required by --auth=token");
  AuthOptions no_key = good;
  no_key.tls_key.clear();
  s = Authenticator::Create(no_key, kDevices).status();
  EXPECT_EQ(s.message(), "tls_key=\"\": required by --auth=token");
  AuthOptions not_pem = good;
  not_pem.tls_cert = WriteFile("not_pem.crt", "hello\n");
  s = Authenticator::Create(not_pem, kDevices).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tls_cert=\""), absl::string_view::npos) << s;
  AuthOptions with_ca = good;
  with_ca.tls_ca = good.tls_cert;
  s = Authenticator::Create(with_ca, kDevices).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tls_ca=\""), absl::string_view::npos) << s;
}

TEST(AuthTest, MtlsNeedsEveryFile) {
  AuthOptions options{.mode = AuthMode::kMtls, .tls_cert = WriteFile("c.pem", "x")};
  absl::Status s = Authenticator::Create(options, kDevices).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tls_key"), absl::string_view::npos) << s;
}

TEST(AuthTest, LocalListenAddresses) {
  for (const char* local : {"unix:/tmp/iommud.sock", "127.0.0.1:50051", "127.1.2.3:0",
                            "localhost:1", "LOCALHOST:1", "[::1]:50051", "[::ffff:127.0.0.1]:1"}) {
    EXPECT_TRUE(IsLocalListenAddress(local)) << local;
  }
  for (const char* remote : {"0.0.0.0:50051", "[::]:50051", ":50051", "10.0.0.1:50051",
                             "128.0.0.1:1", "iommud.example:50051", "[::2]:1",
                             "[::ffff:10.0.0.1]:1", "[::1:1", "unix-abstract:iommud", "nonsense"}) {
    EXPECT_FALSE(IsLocalListenAddress(remote)) << remote;
  }
}

}  // namespace
}  // namespace iommu::server
