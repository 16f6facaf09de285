// SPDX-License-Identifier: Apache-2.0
#include "core/testing/sanitizer_report.h"

#include <gtest/gtest.h>

#include <string>

namespace iommu::testing {
namespace {

// A data race as TSan prints it, with the top frames of its two accesses.
std::string Race(const std::string& first_top, const std::string& second_top) {
  return "==================\n"
         "WARNING: ThreadSanitizer: data race (pid=1)\n"
         "  Read of size 8 at 0x7b9c00037428 by thread T8:\n"
         "    #0 " +
         first_top +
         "\n"
         "    #1 grpc::internal::CallbackWithSuccessTag::StaticRun(grpc_completion_queue_functor*, "
         "int) /usr/include/grpcpp/support/callback_common.h:199:47 (iommud+0x14e737)\n"
         "  Previous write of size 8 at 0x7b9c00037428 by thread T15:\n"
         "    #0 " +
         second_top +
         "\n"
         "    #1 <null> <null> (libgrpc++.so.1.51+0x897ba) (BuildId: 96701)\n"
         "SUMMARY: ThreadSanitizer: data race in Run\n"
         "==================\n";
}

const std::string kGrpcFrame =
    "grpc::internal::CallbackWithSuccessTag::Run(bool) "
    "/usr/include/grpcpp/support/callback_common.h:202:21 (iommud+0x14e737) (BuildId: 9fc6)";
const std::string kAtomicFrame =
    "std::__atomic_base<int>::fetch_sub(int, std::memory_order) "
    "/usr/bin/../lib/gcc/x86_64-linux-gnu/12/../../../../include/c++/12/bits/atomic_base.h:628:16 "
    "(iommud+0x16cbb0)";
const std::string kOurFrame =
    "iommu::server::FaultWatcher::Run(iommu::core::Caller, unsigned long) "
    "/src/server/fault_watcher.cc:88:3 (iommud+0x1c9997) (BuildId: 9fc6)";

TEST(SanitizerReportTest, RacesInsideGrpcAloneAreNotOursAndOthersAre) {
  EXPECT_EQ(SanitizerReport("log line\n" + Race(kGrpcFrame, kAtomicFrame)), "");
  // Our frame on either access makes it ours; the report is quoted whole.
  const std::string ours = Race(kGrpcFrame, kOurFrame);
  const std::string report = SanitizerReport("log line\n" + ours + "more log\n");
  EXPECT_NE(report.find("WARNING: ThreadSanitizer: data race"), std::string::npos);
  EXPECT_NE(report.find("fault_watcher.cc:88"), std::string::npos);
  EXPECT_NE(report.find("SUMMARY: ThreadSanitizer"), std::string::npos);
  EXPECT_EQ(report.find("more log"), std::string::npos);
  EXPECT_NE(SanitizerReport(Race(kOurFrame, kAtomicFrame)), "");
  // A race of gRPC's is skipped, and one of ours after it is still found.
  EXPECT_NE(SanitizerReport(Race(kGrpcFrame, kAtomicFrame) + ours).find("fault_watcher.cc"),
            std::string::npos);
  // Other sanitizers' reports and other TSan warnings are always ours.
  EXPECT_NE(SanitizerReport("==1==ERROR: AddressSanitizer: heap-use-after-free\nSUMMARY: x\n"), "");
  EXPECT_NE(SanitizerReport("a.cc:3:5: runtime error: signed integer overflow\n"), "");
  EXPECT_NE(SanitizerReport("WARNING: ThreadSanitizer: lock-order-inversion\nSUMMARY: y\n"), "");
  EXPECT_EQ(SanitizerReport("iommud serving\n"), "");
}

TEST(SanitizerReportTest, TheDaemonsEnvironmentZeroesTsansExitCode) {
  bool found = false;
  for (const std::string& e : DaemonEnvironment()) {
    if (e.rfind("TSAN_OPTIONS=", 0) == 0) {
      found = true;
      EXPECT_NE(e.find("exitcode=0"), std::string::npos) << e;
    }
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace iommu::testing
