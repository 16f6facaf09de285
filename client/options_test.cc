// SPDX-License-Identifier: Apache-2.0
#include "client/options.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace iommu::client {
namespace {

struct BadCase {
  const char* name;
  Options options;
  const char* message_prefix;
};

Options Mtls() {
  Options o;
  o.credentials.kind = Credentials::Kind::kMtls;
  o.credentials.tls_cert_file = "c.pem";
  o.credentials.tls_key_file = "k.pem";
  o.credentials.tls_ca_file = "ca.pem";
  return o;
}

Options Token() {
  Options o;
  o.credentials.kind = Credentials::Kind::kToken;
  o.credentials.token = "s3cret-0123456789";
  o.credentials.tls_ca_file = "ca.pem";
  return o;
}

TEST(ValidateOptionsTest, DefaultsAreValid) { EXPECT_TRUE(ValidateOptions(Options{}).ok()); }

TEST(ValidateOptionsTest, GoodTargets) {
  for (const char* target :
       {"unix:/tmp/iommud.sock", "127.0.0.1:50051", "localhost:1", "[::1]:65535"}) {
    Options o;
    o.target = target;
    EXPECT_TRUE(ValidateOptions(o).ok()) << target;
  }
  EXPECT_TRUE(ValidateOptions(Mtls()).ok());
  EXPECT_TRUE(ValidateOptions(Token()).ok());
  Options named = Token();
  named.credentials.tls_server_name = "iommud.example";
  EXPECT_TRUE(ValidateOptions(named).ok());
}

TEST(ValidateOptionsTest, BadOptionsNameFieldAndValue) {
  std::vector<BadCase> cases;
  auto add = [&](const char* name, auto mutate, const char* prefix) {
    Options o;
    mutate(o);
    cases.push_back({name, o, prefix});
  };
  add(
      "empty target", [](Options& o) { o.target = ""; }, "target=\"\"");
  add(
      "relative unix", [](Options& o) { o.target = "unix:sock"; }, "target=\"unix:sock\"");
  add(
      "no port", [](Options& o) { o.target = "localhost"; }, "target=\"localhost\"");
  add(
      "port 0", [](Options& o) { o.target = "localhost:0"; }, "target=\"localhost:0\"");
  add(
      "port too big", [](Options& o) { o.target = "h:65536"; }, "target=\"h:65536\"");
  add(
      "token without kind", [](Options& o) { o.credentials.token = "t"; }, "credentials.token=");
  add(
      "empty token",
      [](Options& o) {
        o = Token();
        o.credentials.token.clear();
      },
      "credentials.token=\"\"");
  add(
      "token with space",
      [](Options& o) {
        o = Token();
        o.credentials.token = "a b";
      },
      "credentials.token=");
  add(
      "token without a CA",
      [](Options& o) {
        o = Token();
        o.credentials.tls_ca_file.clear();
      },
      "credentials.tls_ca_file=\"\": a token is sent only over TLS");
  add(
      "token with a client certificate",
      [](Options& o) {
        o = Token();
        o.credentials.tls_cert_file = "c";
      },
      "credentials.tls_cert_file=\"c\": given with a token");
  add(
      "ca without tls", [](Options& o) { o.credentials.tls_ca_file = "ca.pem"; },
      "credentials.tls_ca_file=\"ca.pem\"");
  add(
      "server name without tls", [](Options& o) { o.credentials.tls_server_name = "x"; },
      "credentials.tls_server_name=\"x\"");
  add(
      "tls files without mtls", [](Options& o) { o.credentials.tls_cert_file = "c"; },
      "credentials.tls_cert_file=\"c\"");
  add(
      "mtls no cert",
      [](Options& o) {
        o = Mtls();
        o.credentials.tls_cert_file.clear();
      },
      "credentials.tls_cert_file=\"\"");
  add(
      "mtls no key",
      [](Options& o) {
        o = Mtls();
        o.credentials.tls_key_file.clear();
      },
      "credentials.tls_key_file=\"\"");
  add(
      "mtls no ca",
      [](Options& o) {
        o = Mtls();
        o.credentials.tls_ca_file.clear();
      },
      "credentials.tls_ca_file=\"\"");
  add(
      "zero deadline", [](Options& o) { o.default_deadline = absl::ZeroDuration(); },
      "default_deadline=\"0\"");
  add(
      "negative connect", [](Options& o) { o.connect_timeout = absl::Seconds(-1); },
      "connect_timeout=");
  add(
      "zero attempts", [](Options& o) { o.retry.max_attempts = 0; }, "retry.max_attempts=\"0\"");
  add(
      "backoff order", [](Options& o) { o.retry.max_backoff = absl::Milliseconds(1); },
      "retry.initial_backoff=");
  for (const BadCase& c : cases) {
    const absl::Status s = ValidateOptions(c.options);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_EQ(s.message().substr(0, std::string(c.message_prefix).size()), c.message_prefix)
        << c.name << ": " << s;
  }
}

class TokenFileTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& contents) {
    // ctest runs each test in its own process, concurrently: one file per test and process.
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = ::testing::TempDir() + "/token_file_test." + info->name() + "." +
            std::to_string(::getpid());
    std::ofstream(path_) << contents;
    return path_;
  }
  void TearDown() override { std::remove(path_.c_str()); }
  std::string path_;
};

TEST_F(TokenFileTest, FirstWordOfFirstNonCommentLine) {
  absl::StatusOr<std::string> single = ReadTokenFile(Write("s3cret\n"));
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ(*single, "s3cret");
  absl::StatusOr<std::string> listed =
      ReadTokenFile(Write("# tokens\n\n  tok-nic0 nic0\ntok-admin admin\n"));
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(*listed, "tok-nic0");
}

TEST_F(TokenFileTest, EmptyOrMissing) {
  EXPECT_EQ(ReadTokenFile(Write("# only a comment\n\n")).status().code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status missing = ReadTokenFile("/nonexistent/token").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.message(), "token_file=\"/nonexistent/token\": cannot read the file");
}

}  // namespace
}  // namespace iommu::client
