#include "server/auth.h"

#include <fstream>

#include <gtest/gtest.h>

namespace iommu::server {
namespace {

using Kind = Identity::Kind;

TEST(AuthTest, ActAsUnderEachIdentity) {
  // --auth=none: the request is trusted; empty device is the admin.
  auto none_dev = Authenticator::ActAs(Identity{}, "nic0", 5);
  ASSERT_TRUE(none_dev.ok());
  EXPECT_EQ(none_dev->device, "nic0");
  EXPECT_FALSE(none_dev->admin);
  EXPECT_EQ(none_dev->session_id, 5u);
  auto none_admin = Authenticator::ActAs(Identity{}, "", 0);
  ASSERT_TRUE(none_admin.ok());
  EXPECT_TRUE(none_admin->admin);

  // A device credential acts only as itself; empty means itself.
  const Identity nic0{.kind = Kind::kDevice, .device = "nic0"};
  auto self = Authenticator::ActAs(nic0, "", 0);
  ASSERT_TRUE(self.ok());
  EXPECT_EQ(self->device, "nic0");
  EXPECT_FALSE(self->admin);
  EXPECT_TRUE(Authenticator::ActAs(nic0, "nic0", 0).ok());
  absl::Status other = Authenticator::ActAs(nic0, "nvme0", 0).status();
  EXPECT_EQ(other.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(other.message().find("device=\"nvme0\""), absl::string_view::npos) << other;

  // The admin acts as the named device, with admin rights.
  const Identity admin{.kind = Kind::kAdmin};
  auto as_gpu = Authenticator::ActAs(admin, "gpu0", 0);
  ASSERT_TRUE(as_gpu.ok());
  EXPECT_TRUE(as_gpu->admin);
  EXPECT_EQ(as_gpu->device, "gpu0");
}

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(AuthTest, TokenFileIsValidated) {
  AuthOptions options{.mode = AuthMode::kToken};
  EXPECT_EQ(Authenticator::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.token_file = "/nonexistent/tokens";
  EXPECT_EQ(Authenticator::Create(options).status().code(), absl::StatusCode::kNotFound);
  options.token_file = WriteFile("tokens_bad", "tok nic0 extra\n");
  absl::Status bad = Authenticator::Create(options).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find(":1"), absl::string_view::npos) << bad;
  options.token_file = WriteFile("tokens_dup", "a nic0\na nvme0\n");
  EXPECT_EQ(Authenticator::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.token_file = WriteFile("tokens_empty", "# nothing\n\n");
  EXPECT_EQ(Authenticator::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.token_file = WriteFile("tokens_ok", "# c\n a nic0  # trailing\nb admin\n");
  EXPECT_TRUE(Authenticator::Create(options).ok());
}

TEST(AuthTest, MtlsNeedsEveryFile) {
  AuthOptions options{.mode = AuthMode::kMtls, .tls_cert = WriteFile("c.pem", "x")};
  absl::Status s = Authenticator::Create(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tls_key"), absl::string_view::npos) << s;
}

}  // namespace
}  // namespace iommu::server
