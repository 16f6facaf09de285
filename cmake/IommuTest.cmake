# SPDX-License-Identifier: Apache-2.0
# iommu_cc_test(NAME SRCS... DEPS...): one gtest binary registered with ctest,
# its cases discovered individually so a failure names the case.
include(GoogleTest)

# iommu_sanitizer_runtime(TARGET): what an executable needs in a sanitizer
# build. Under TSan: core/testing/tsan_absl_mutex.cc, which makes absl::Mutex
# (ours, and the one gRPC locks inside the shared libraries, since the
# executable's definition interposes theirs) visible to TSan with the
# distribution's uninstrumented abseil. Every executable of the TSan build
# takes it: the daemon and the clients the tests start as much as the tests.
function(iommu_sanitizer_runtime name)
  if(IOMMU_SANITIZE MATCHES "thread")
    target_sources(${name} PRIVATE ${PROJECT_SOURCE_DIR}/core/testing/tsan_absl_mutex.cc)
    target_link_libraries(${name} PRIVATE ${CMAKE_DL_LIBS})
  endif()
endfunction()

function(iommu_cc_test name)
  if(NOT IOMMU_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gmock GTest::gtest_main)
  iommu_sanitizer_runtime(${name})
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 600)
endfunction()

# iommu_cc_benchmark(NAME SRCS... DEPS...): a Google Benchmark binary, built
# only with IOMMU_BUILD_BENCHMARKS and run by `make bench`, never by ctest.
function(iommu_cc_benchmark name)
  if(NOT IOMMU_BUILD_BENCHMARKS)
    return()
  endif()
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} benchmark::benchmark_main)
  set_property(GLOBAL APPEND PROPERTY IOMMU_BENCHMARKS ${name})
endfunction()
