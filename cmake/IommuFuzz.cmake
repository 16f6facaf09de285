# SPDX-License-Identifier: Apache-2.0
# iommu_fuzzer(NAME SRCS... DEPS... CORPUS DIR): a libFuzzer target (its
# entry point LLVMFuzzerTestOneInput in SRCS) built with IOMMU_FUZZ=ON and
# run by `make fuzz`; in a build with tests, NAME_replay instead: the same
# entry point under core/testing/fuzz_replay_main.cc, a ctest that runs every
# file of CORPUS (the checked-in seeds and regression inputs) through it.
function(iommu_fuzzer name)
  cmake_parse_arguments(ARG "" "CORPUS" "SRCS;DEPS" ${ARGN})
  if(IOMMU_FUZZ)
    add_executable(${name} ${ARG_SRCS})
    target_link_libraries(${name} PRIVATE ${ARG_DEPS})
    target_link_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
  elseif(IOMMU_BUILD_TESTS)
    add_executable(${name}_replay ${ARG_SRCS} ${PROJECT_SOURCE_DIR}/core/testing/fuzz_replay_main.cc)
    target_link_libraries(${name}_replay PRIVATE ${ARG_DEPS})
    iommu_sanitizer_runtime(${name}_replay)
    add_test(NAME ${name}_replay COMMAND ${name}_replay ${ARG_CORPUS})
  endif()
endfunction()
