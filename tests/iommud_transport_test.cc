// SPDX-License-Identifier: Apache-2.0
// Integration: transport security of the real iommud — what it refuses at
// start (token auth without a server certificate, token files naming unknown
// devices or holding short tokens, --auth=none on an address other hosts can
// reach), the INSECURE warning on stderr at every log level, and the
// plaintext health-only listener beside a TLS daemon, and the mode of its
// Unix sockets (--unix_socket_mode).

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "tests/daemon_harness.h"
#include "tests/health_probe.h"
#include "tests/test_certs.h"
#include "tests/test_clients.h"

namespace iommu::testing {
namespace {

using grpc::StatusCode;

constexpr int kServing = 1;  // grpc.health.v1 ServingStatus
constexpr int kNotServing = 2;

std::string WriteTokens(const std::string& text) {
  const std::string path = MakeTempDir() + "/tokens";
  std::ofstream(path) << text;
  return path;
}

std::vector<std::string> TokenFlags(const std::string& token_file) {
  return {"--auth=token", "--token_file=" + token_file, "--tls_cert=" + TestCerts() + "/server.crt",
          "--tls_key=" + TestCerts() + "/server.key"};
}

// Starts iommud with `flags`, expecting it to refuse: a non-zero exit code
// and `message` on stderr.
void ExpectRefused(const std::vector<std::string>& flags, const std::string& message) {
  DaemonProcess daemon;
  EXPECT_FALSE(daemon.Start(flags)) << message;
  ASSERT_TRUE(daemon.exit_code().has_value()) << "still running; log:\n" << daemon.log();
  EXPECT_NE(*daemon.exit_code(), 0);
  EXPECT_NE(daemon.log().find(message), std::string::npos) << daemon.log();
}

// A grpc.health.v1.Health/Watch stream of the whole server's status.
class HealthWatch {
 public:
  explicit HealthWatch(const std::shared_ptr<grpc::Channel>& channel) : stub_(channel) {
    ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    call_ = stub_.PrepareCall(&ctx_, "/grpc.health.v1.Health/Watch", &cq_);
    call_->StartCall(Tag());
    started_ = Wait();
    if (started_) {
      call_->WriteLast(HealthRequest(""), grpc::WriteOptions(), Tag());
      started_ = Wait();
    }
  }
  ~HealthWatch() {
    ctx_.TryCancel();
    grpc::Status status;
    call_->Finish(&status, Tag());
    Wait();
    cq_.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok)) {
    }
  }

  // The next status sent, or -1 when the stream ended.
  int Next() {
    if (!started_) return -1;
    grpc::ByteBuffer response;
    call_->Read(&response, Tag());
    return Wait() ? DecodeHealth(response) : -1;
  }

 private:
  void* Tag() { return reinterpret_cast<void*>(++tags_); }
  bool Wait() {
    void* tag = nullptr;
    bool ok = false;
    return cq_.Next(&tag, &ok) && ok;
  }

  grpc::GenericStub stub_;
  grpc::ClientContext ctx_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
  intptr_t tags_ = 0;
  bool started_ = false;
};

// --- refused at start ---------------------------------------------------------------

TEST(TransportStartTest, TokenAuthNeedsTheServerCertificateAndKey) {
  const std::string tokens = WriteTokens("tok-nic0-7d1e5a90c3 nic0\n");
  ExpectRefused({"--auth=token", "--token_file=" + tokens},
                "tls_cert=\"\": required by --auth=token");
  ExpectRefused(
      {"--auth=token", "--token_file=" + tokens, "--tls_cert=" + TestCerts() + "/server.crt"},
      "tls_key=\"\": required by --auth=token");
}

TEST(TransportStartTest, TokenFileNamingAnUnknownDeviceIsRefused) {
  const std::string tokens =
      WriteTokens("# ok\ntok-nic0-7d1e5a90c3 nic0\ntok-gpu9-3e8a61c0d5 gpu9\n");
  ExpectRefused(
      TokenFlags(tokens),
      "token_file=\"" + tokens + ":3\": names device \"gpu9\", which is not in the topology");
}

TEST(TransportStartTest, ShortTokenIsRefused) {
  const std::string tokens = WriteTokens("tok-nic0-7d1e5a90c3 nic0\nshort-admin admin\n");
  ExpectRefused(TokenFlags(tokens), "token_file=\"" + tokens +
                                        ":2\": the token has 11 characters; a token needs at "
                                        "least 16");
}

TEST(TransportStartTest, AuthNoneRefusesARemoteListenerUnlessForced) {
  ExpectRefused({"--auth=none", "--listen=0.0.0.0:0"},
                "listen=\"0.0.0.0:0\": is reachable from other hosts");
  ExpectRefused({"--auth=none", "--listen=unix:/tmp/iommud_unused.sock,10.1.2.3:0"},
                "listen=\"10.1.2.3:0\"");

  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({"--auth=none", "--listen=0.0.0.0:0", "--auth_none_allow_remote"}))
      << daemon.log();
  const std::string& bound = daemon.tcp_target();
  ASSERT_EQ(bound.rfind("0.0.0.0:", 0), 0u) << bound;
  Stubs s(Insecure("127.0.0.1:" + bound.substr(bound.find(':') + 1)));
  v1::ListIommusResponse out;
  ASSERT_OK(s.devices->ListIommus(Ctx().get(), {}, &out));
  EXPECT_GT(out.smmus_size(), 0);
  EXPECT_NE(daemon.log().find("callers on other hosts are trusted too"), std::string::npos)
      << daemon.log();
  EXPECT_EQ(daemon.Stop(), 0);
}

// --- the --auth=none warning --------------------------------------------------------

TEST(TransportWarningTest, InsecureWarningIsOnStderrAtEveryLogLevel) {
  for (const char* level : {"error", "off"}) {
    SCOPED_TRACE(level);
    DaemonProcess daemon;
    ASSERT_TRUE(daemon.Start({"--auth=none", std::string("--log_level=") + level},
                             DaemonProcess::Ready::kUnixSocket))
        << daemon.log();
    // Written once the listeners are up, which is when Start returns.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (daemon.log().find("INSECURE") == std::string::npos &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    const std::string err = daemon.log();
    EXPECT_NE(err.find("INSECURE"), std::string::npos) << err;
    EXPECT_NE(err.find("--auth=none"), std::string::npos) << err;
    // Only the direct line: the structured warning is below the log level.
    EXPECT_EQ(err.find("INSECURE"), err.rfind("INSECURE")) << err;
    EXPECT_EQ(err.find("serving"), std::string::npos) << "the log level was not applied:\n" << err;
    EXPECT_EQ(daemon.out().find("INSECURE"), std::string::npos);
    EXPECT_EQ(daemon.Stop(), 0);
  }
  // A daemon with a credential does not warn.
  DaemonProcess token;
  ASSERT_TRUE(token.Start(TokenFlags(WriteTokens("tok-nic0-7d1e5a90c3 nic0\n")))) << token.log();
  EXPECT_EQ(token.log().find("INSECURE"), std::string::npos) << token.log();
}

// --- the health-only listener -------------------------------------------------------

class HealthListenerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::string> flags = TokenFlags(WriteTokens("tok-admin-9c3f0b72e8 admin\n"));
    flags.push_back("--health_listen=127.0.0.1:0");
    ASSERT_TRUE(daemon_.Start(flags)) << daemon_.log();
    ASSERT_FALSE(daemon_.health_address().empty()) << daemon_.log();
    ASSERT_EQ(daemon_.health_address().rfind("127.0.0.1:", 0), 0u) << daemon_.health_address();
  }
  DaemonProcess daemon_;
};

TEST_F(HealthListenerTest, PlaintextHealthBesideTlsMainPorts) {
  const auto health = Insecure(daemon_.health_address());
  for (const char* service : {"", "iommu.v1.Dma", "iommu.v1.Devices"}) {
    EXPECT_EQ(HealthCheck(health, service), kServing) << service;
  }
  // The main listeners speak only TLS, health included.
  EXPECT_EQ(HealthCheck(Insecure(daemon_.tcp_target()), ""), -int(StatusCode::UNAVAILABLE));
  EXPECT_EQ(HealthCheck(Insecure(daemon_.unix_target()), ""), -int(StatusCode::UNAVAILABLE));
  EXPECT_EQ(HealthCheck(TlsChannel(daemon_.tcp_target()), ""), kServing);
}

TEST_F(HealthListenerTest, ServesNothingButHealth) {
  Stubs s(Insecure(daemon_.health_address()));
  v1::ListIommusResponse iommus;
  EXPECT_CODE(s.devices->ListIommus(Ctx("tok-admin-9c3f0b72e8").get(), {}, &iommus), UNIMPLEMENTED);
  v1::AllocBufferRequest alloc;
  alloc.set_size_bytes(4096);
  v1::AllocBufferResponse buffer;
  EXPECT_CODE(s.memory->AllocBuffer(Ctx("tok-admin-9c3f0b72e8").get(), alloc, &buffer),
              UNIMPLEMENTED);
  // Nor reflection, which the main listeners serve.
  const std::string reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
  EXPECT_EQ(HealthCheck(Insecure(daemon_.health_address()), "", reflection),
            -int(StatusCode::UNIMPLEMENTED));
  EXPECT_NE(HealthCheck(TlsChannel(daemon_.tcp_target()), "", reflection),
            -int(StatusCode::UNIMPLEMENTED));
}

TEST_F(HealthListenerTest, NotServingOnceDraining) {
  HealthWatch watch(Insecure(daemon_.health_address()));
  ASSERT_EQ(watch.Next(), kServing);
  kill(daemon_.pid(), SIGTERM);
  EXPECT_EQ(watch.Next(), kNotServing);
  EXPECT_EQ(daemon_.Stop(), 0) << daemon_.log();
}

TEST(HealthListenerStartTest, OffByDefaultAndOnInAnyAuthMode) {
  DaemonProcess plain;
  ASSERT_TRUE(plain.Start()) << plain.log();
  EXPECT_TRUE(plain.health_address().empty());
  EXPECT_NE(plain.log().find("health=off"), std::string::npos) << plain.log();
  DaemonProcess with_health;
  ASSERT_TRUE(with_health.Start({"--auth=none", "--health_listen=127.0.0.1:0"}))
      << with_health.log();
  EXPECT_EQ(HealthCheck(Insecure(with_health.health_address()), ""), kServing);
  ExpectRefused(
      {"--health_listen=unix:" + with_health.dir()},
      "health_listen=\"unix:" + with_health.dir() + "\": the path exists and is not a socket");
}

// --- the Unix sockets' mode ---------------------------------------------------------

// The permission bits of a path (not followed), or -1 when it is absent.
int ModeOf(const std::string& path) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return -1;
  return int(st.st_mode & 07777);
}

TEST(UnixSocketModeTest, EveryUnixListenerGetsTheModeAndServes) {
  const std::string health = MakeTempDir() + "/health.sock";
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({"--unix_socket_mode=0660", "--health_listen=unix:" + health}))
      << daemon.log();
  EXPECT_EQ(ModeOf(daemon.unix_target().substr(5)), 0660);
  EXPECT_EQ(ModeOf(health), 0660);
  EXPECT_EQ(HealthCheck(Insecure(daemon.unix_target()), ""), kServing);
  EXPECT_EQ(HealthCheck(Insecure("unix:" + health), ""), kServing);
}

TEST(UnixSocketModeTest, WithoutTheFlagTheUmaskDecides) {
  const mode_t umask_before = umask(0077);  // the daemon inherits it
  DaemonProcess daemon;
  const bool started = daemon.Start();
  umask(umask_before);
  ASSERT_TRUE(started) << daemon.log();
  EXPECT_EQ(ModeOf(daemon.unix_target().substr(5)), 0700);
}

TEST(UnixSocketModeTest, AModeThatIsNotOctalPermissionBitsIsRefused) {
  for (const std::string bad : {"660x", "0888", "rw", "12", "1660", "06600"}) {
    ExpectRefused({"--unix_socket_mode=" + bad},
                  "unix_socket_mode=\"" + bad + "\": must be octal permission bits such as 0660");
  }
}

}  // namespace
}  // namespace iommu::testing
