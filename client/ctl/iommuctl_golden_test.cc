// SPDX-License-Identifier: Apache-2.0
// iommuctl against the real iommud: every subcommand, compared with a golden
// transcript (tests/cli/session.golden; regenerate with UPDATE_GOLDEN=1),
// plus simulate and bench, whose figures vary, checked by shape.
#include <fstream>
#include <regex>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/testing/iommud_process.h"
#include "gtest/gtest.h"

namespace iommu::client::ctl {
namespace {

using testing::CtlResult;
using testing::IommudProcess;
using testing::RunCtl;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Fault timestamps are the only thing of a fresh daemon that varies.
std::string Normalise(std::string text) {
  text = std::regex_replace(text, std::regex(R"("timestamp_unix_nanos":"\d+")"),
                            R"("timestamp_unix_nanos":"<ts>")");
  text = std::regex_replace(text, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"),
                            "<time                 >");
  // Export tokens and session ids are random.
  text = std::regex_replace(text, std::regex(R"(iexp_[0-9a-f]{32})"), "iexp_<random>");
  text = std::regex_replace(text, std::regex(R"(session_id  \d+)"), "session_id  <random>");
  return text;
}

class IommuctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::Status s = daemon_.Start();
    ASSERT_TRUE(s.ok()) << s;
  }
  CtlResult Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), "--target=" + daemon_.unix_target());
    return RunCtl(args);
  }
  IommudProcess daemon_;
};

TEST_F(IommuctlTest, GoldenSession) {
  const std::string dir = IOMMUCTL_GOLDEN_DIR;
  const std::string script = ReadFile(dir + "/session.script");
  ASSERT_FALSE(script.empty());
  std::string transcript;
  for (absl::string_view line : absl::StrSplit(script, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> args = absl::StrSplit(line, ' ', absl::SkipEmpty());
    CtlResult r = Ctl(args);
    absl::StrAppend(&transcript, "$ iommuctl ", line, "\n", r.out, r.err);
    // Tables fit a terminal unless asked to be wide (errors and JSON may not).
    if (!absl::StrContains(line, "wide") && !absl::StrContains(line, "json")) {
      for (absl::string_view out_line : absl::StrSplit(r.out, '\n')) {
        EXPECT_LE(out_line.size(), 100u) << "iommuctl " << line << ":\n" << out_line;
      }
    }
    if (r.exit_code != 0) absl::StrAppend(&transcript, "[exit ", r.exit_code, "]\n");
  }
  transcript = Normalise(transcript);
  const std::string golden_path = dir + "/session.golden";
  if (getenv("UPDATE_GOLDEN") != nullptr) {
    std::ofstream(golden_path) << transcript;
    GTEST_SKIP() << "wrote " << golden_path;
  }
  const std::string golden = ReadFile(golden_path);
  std::vector<std::string> want = absl::StrSplit(golden, '\n'),
                           got = absl::StrSplit(transcript, '\n');
  for (size_t i = 0; i < std::min(want.size(), got.size()); ++i) {
    ASSERT_EQ(got[i], want[i]) << "first difference at line " << i + 1 << " of " << golden_path;
  }
  EXPECT_EQ(got.size(), want.size());
}

TEST_F(IommuctlTest, ExportImport) {
  const CtlResult alloc = Ctl({"--device=gpu0", "--json", "alloc", "--size=1M"});
  ASSERT_EQ(alloc.exit_code, 0) << alloc.err;
  std::smatch dma;
  ASSERT_TRUE(std::regex_search(alloc.out, dma, std::regex(R"re("dma_addr":"?([0-9]+))re")))
      << alloc.out;
  const CtlResult sgt = Ctl({"--device=gpu0", "--json", "get-sgtable", "--dma_addr=" + dma[1].str(),
                             "--export", "--export_to=nic0"});
  std::smatch token;
  ASSERT_TRUE(
      std::regex_search(sgt.out, token, std::regex(R"re("export_token":"(iexp_[0-9a-f]{32})")re")))
      << sgt.out << sgt.err;
  // Read-only unless --writable: a bidirectional import is PERMISSION_DENIED.
  const CtlResult rw =
      Ctl({"--device=nic0", "map-sg", "--import_token=" + token[1].str(), "--mode=contiguous"});
  EXPECT_EQ(rw.exit_code, 7) << rw.err;
  EXPECT_NE(rw.err.find("read-only"), std::string::npos) << rw.err;
  // Bound to nic0: another device gets the answer of an unknown token.
  const CtlResult other = Ctl({"--device=nvme0", "map-sg", "--import_token=" + token[1].str(),
                               "--mode=contiguous", "--direction=to_device"});
  EXPECT_EQ(other.exit_code, 5) << other.err;
  const CtlResult import = Ctl({"--device=nic0", "map-sg", "--import_token=" + token[1].str(),
                                "--mode=contiguous", "--direction=to_device"});
  ASSERT_EQ(import.exit_code, 0) << import.err;
  EXPECT_NE(import.out.find("segment_count    1\n"), std::string::npos) << import.out;
  const CtlResult reuse =
      Ctl({"--device=nvme0", "map-sg", "--import_token=garbage", "--mode=contiguous"});
  EXPECT_NE(reuse.exit_code, 0);
  EXPECT_NE(reuse.err.find("import_token"), std::string::npos) << reuse.err;
  // Revocation: only the exporter; then the import is gone.
  EXPECT_EQ(Ctl({"--device=nic0", "revoke-export", "--token=" + token[1].str()}).exit_code, 5);
  const CtlResult revoke =
      Ctl({"--device=gpu0", "--json", "revoke-export", "--token=" + token[1].str()});
  ASSERT_EQ(revoke.exit_code, 0) << revoke.err;
  EXPECT_TRUE(std::regex_search(
      revoke.out, std::regex(R"re("importsUnmapped":"?1"?|"imports_unmapped":"?1"?)re")))
      << revoke.out;
}

TEST_F(IommuctlTest, ExitCodeIsTheStatusCode) {
  EXPECT_EQ(Ctl({"--device=nic0", "get-buffer", "--buffer=77"}).exit_code, 5);  // NOT_FOUND
  EXPECT_EQ(Ctl({"--device=nic0", "alloc-buffer", "--size=0"}).exit_code, 3);   // INVALID_ARGUMENT
  EXPECT_EQ(Ctl({"--device=nic0", "help"}).exit_code, 0);
  EXPECT_EQ(
      RunCtl({"--target=unix:/nonexistent/sock", "--deadline_ms=300", "list-iommus"}).exit_code,
      14);
  EXPECT_EQ(RunCtl({"--target=nowhere", "list-iommus"}).exit_code, 3);
}

TEST_F(IommuctlTest, HealthAsksTheGrpcHealthService) {
  const CtlResult all = Ctl({"health"});
  EXPECT_EQ(all.exit_code, 0) << all.err;
  EXPECT_EQ(all.out, "SERVING\n");
  const CtlResult dma = Ctl({"--json", "health", "--service=iommu.v1.Dma"});
  EXPECT_EQ(dma.exit_code, 0) << dma.err;
  EXPECT_EQ(dma.out, "{\"service\":\"iommu.v1.Dma\",\"status\":\"SERVING\"}\n");
  const CtlResult unknown = Ctl({"health", "--service=nope.v1.Nothing"});
  EXPECT_EQ(unknown.exit_code, 5) << unknown.out;  // NOT_FOUND
  EXPECT_EQ(RunCtl({"--target=unix:/nonexistent/sock", "--deadline_ms=300", "health"}).exit_code,
            14);
}

TEST_F(IommuctlTest, HelpListsEverySubcommand) {
  const CtlResult r = RunCtl({"help"});
  for (const char* sub :
       {"map",         "unmap",         "map-sg",         "unmap-sg",        "alloc",
        "free",        "get-sgtable",   "msi-cookie",     "map-at",          "unmap-range",
        "sync",        "create-domain", "destroy-domain", "get-domain",      "list-domains",
        "attach",      "detach",        "revoke-export",  "iova-ranges",     "walk-domain",
        "list-iommus", "list-devices",  "translate",      "translate-batch", "alloc-buffer",
        "free-buffer", "get-buffer",    "open-session",   "keepalive",       "close-session",
        "stats",       "watch-faults",  "dump",           "simulate",        "bench",
        "health"}) {
    EXPECT_NE(r.out.find(absl::StrCat("\n  ", sub, " ")), std::string::npos) << sub;
  }
}

TEST_F(IommuctlTest, SimulateEveryProfilePrintsOneLinePerSecondWithoutErrors) {
  for (const char* profile : {"nic", "nvme", "gpu", "camera", "untrusted"}) {
    const CtlResult r =
        Ctl({"simulate", absl::StrCat("--profile=", profile), "--seconds=2", "--rate=50"});
    ASSERT_EQ(r.exit_code, 0) << profile << ": " << r.err;
    const std::regex line(absl::StrCat(
        R"(t=\ds profile=)", profile,
        R"( device=\w+ steps=\d+ rpcs=\d+ maps=[1-9]\d* unmaps=\d+ translates=[1-9]\d* )"
        R"(faults=(\d+) errors=0)"));
    std::vector<std::string> lines = absl::StrSplit(r.out, '\n', absl::SkipEmpty());
    ASSERT_GE(lines.size(), 1u) << r.out;
    uint64_t faults = 0;
    for (const std::string& l : lines) {
      std::smatch m;
      ASSERT_TRUE(std::regex_match(l, m, line)) << l;
      faults += std::stoull(m[1]);
    }
    if (std::string(profile) == "untrusted") {
      EXPECT_GT(faults, 0u);
    }
  }
  // Everything the simulators made was released (their sessions closed).
  const CtlResult devices = Ctl({"--json", "list-devices"});
  EXPECT_EQ(devices.out.find(R"("mappings":"1)"), std::string::npos) << devices.out;
  EXPECT_EQ(Ctl({"simulate", "--profile=toaster"}).exit_code, 3);
}

TEST_F(IommuctlTest, BenchReportsThroughputAndPercentiles) {
  const std::regex unary(
      R"(bench map\+unmap: api=unary mode=single device=sata0 dma_mask_bits=32 [^\n]*\n)"
      R"(  throughput  \d+ ops/s \(\d+ rpcs/s\), 0 errors\n)"
      R"(  map         p50=[\d.]+us p99=[\d.]+us p99\.9=[\d.]+us\n)"
      R"(  unmap       p50=[\d.]+us p99=[\d.]+us p99\.9=[\d.]+us\n)");
  CtlResult r = Ctl({"bench", "--seconds=1"});
  EXPECT_TRUE(std::regex_match(r.out, unary)) << r.out << r.err;
  r = Ctl({"bench", "--seconds=1", "--baseline", "--dma_mask_bits=64"});
  EXPECT_NE(r.out.find("bench empty_rpc(Sync): api=unary mode=single device=nic0"),
            std::string::npos)
      << r.out;
  r = Ctl({"--json", "bench", "--seconds=1", "--api=batch", "--mode=sg", "--pages=4",
           "--dma_mask_bits=64", "--threads=2", "--batch_size=32"});
  EXPECT_TRUE(std::regex_search(
      r.out, std::regex(R"("api":"batch","mode":"sg","device":"nic0".*"errors":0)")))
      << r.out << r.err;
  r = Ctl({"bench", "--dma_mask_bits=39"});
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_NE(r.err.find("dma_mask_bits=0x27: no device with this mask"), std::string::npos) << r.err;
  // Nothing left mapped.
  EXPECT_EQ(Ctl({"--json", "list-devices"}).out.find(R"("mappings":"1)"), std::string::npos);
}

}  // namespace
}  // namespace iommu::client::ctl
