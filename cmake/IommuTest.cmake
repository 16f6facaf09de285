# iommu_cc_test(NAME SRCS... DEPS...): one gtest binary registered with ctest,
# its cases discovered individually so a failure names the case.
include(GoogleTest)

function(iommu_cc_test name)
  if(NOT IOMMU_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gmock GTest::gtest_main)
  if(IOMMU_SANITIZE MATCHES "thread")
    # Makes absl::Mutex visible to TSan with the distribution's abseil.
    target_sources(${name} PRIVATE ${PROJECT_SOURCE_DIR}/core/testing/tsan_absl_mutex.cc)
    target_link_libraries(${name} PRIVATE ${CMAKE_DL_LIBS})
  endif()
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
