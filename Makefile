# SPDX-License-Identifier: Apache-2.0
# iommu-broker: the two commands are `make run` and `make test`.
# Each installs missing Debian packages (scripts/deps.sh), configures and builds.

BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# Development and CI builds treat warnings as errors; a plain cmake build
# (users, packagers) does not.
WERROR = -DIOMMU_WERROR=ON
# Compiles go through ccache when it is installed (scripts/deps.sh installs
# it): a rebuild, a sanitizer build after a switch of branch, or another
# clone of the same sources reuses the objects. The cache does not depend on
# where the clone is (CCACHE_BASEDIR).
CCACHE := $(shell command -v ccache 2>/dev/null)
LAUNCHER = $(if $(CCACHE),-DCMAKE_C_COMPILER_LAUNCHER=$(CCACHE) -DCMAKE_CXX_COMPILER_LAUNCHER=$(CCACHE))
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := true
export CCACHE_MAXSIZE ?= 10G
# The one version string, project(iommu_broker VERSION ...) in CMakeLists.txt.
VERSION := $(shell sed -n 's/^project.iommu_broker VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
CTEST_FLAGS ?= --output-on-failure
# Test runs keep their files in a directory of their own, removed when they pass.
WITH_TMPDIR = bash $(CURDIR)/scripts/with_test_tmpdir.sh

.PHONY: all deps configure build run test bench workloads asan tsan thread-safety e2e ci clean \
	format format-check fuzz soak deb images

all: build

deps:
	@bash scripts/deps.sh

$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja $(LAUNCHER) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(WERROR) $(CMAKE_FLAGS)

configure: deps $(BUILD_DIR)/build.ninja

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

# iommud on the default topology with `iommuctl simulate` demo traffic; Ctrl-C stops it.
run: build
	@BUILD_DIR=$(BUILD_DIR) bash scripts/run.sh

test: build
	cd $(BUILD_DIR) && $(WITH_TMPDIR) ctest -j $(JOBS) $(CTEST_FLAGS)

# Google Benchmark binaries for the hot paths, then the workload runner.
bench: build
	@for b in $$(find $(BUILD_DIR) -name '*_benchmark' -type f -perm -u+x | sort); do \
	  echo "== $$b"; $$b --benchmark_min_time=0.2 || exit 1; done
	$(BUILD_DIR)/core/iommu_workloads

workloads: build
	$(BUILD_DIR)/core/iommu_workloads

# Core tests under AddressSanitizer + UndefinedBehaviorSanitizer (the daemon and SDKs are
# exercised by the integration tests of `make test`).
asan: deps
	cmake -S . -B build-asan -G Ninja $(LAUNCHER) -DCMAKE_BUILD_TYPE=Debug $(WERROR) -DIOMMU_BUILD_BENCHMARKS=OFF \
	  -DIOMMU_CORE_ONLY=ON -DCMAKE_CXX_COMPILER=clang++ -DIOMMU_SANITIZE=address,undefined
	cmake --build build-asan -j $(JOBS)
	cd build-asan && $(WITH_TMPDIR) ctest -j $(JOBS) $(CTEST_FLAGS)

# ThreadSanitizer over the multi-threaded tests: the core's (concurrency, fault
# ring, Batch runs, request log) and the integration tests that drive a real
# iommud, itself built with TSan, from many threads and clients (a report in
# the daemon's log fails the test: core/testing/sanitizer_report.h). The same
# clang build checks the thread-safety annotations, as `make thread-safety`
# does (TSAN_TESTS=. runs every test). core/testing/tsan.supp says what the
# uninstrumented gRPC and abseil make TSan unable to judge.
TSAN_TESTS ?= Concurren|FaultRing|Batch|RequestLog|Drain|WatchFaults|FaultWatchers|SessionTest|SessionRelease|EveryRpc|IsolationTest|StateTest|ClientRequestIdTest|RetryTest
# The kill tests need more traffic between kills than TSan's slowdown of
# every restart leaves them (make test runs them, make soak at length), and
# two retry tests count attempts within a sub-second deadline.
# The hostile-stream, idle-watcher and memory-release tests measure RSS,
# which TSan's shadow inflates.
TSAN_EXCLUDE ?= CrashCycles|CutByDaemonKills|RetriesEndAtTheCallsDeadline|BatchGivesUpWhenNoStream|HostileBatchStreamsStayWithin|IdleWatchersHoldNoThread|RssReturnsNearTheBaseline
# The executables that hold TSAN_TESTS (with iommud, iommuctl and every
# library they link, so -Wthread-safety sees all non-test code); TSAN_TESTS=.
# needs TSAN_TARGETS=all.
TSAN_TARGETS ?= iommud iommuctl state_client client_integration_test client_retry_test \
  client_status_test broker_batch_test broker_concurrency_test broker_isolation_test \
  broker_restore_test broker_sessions_test request_log_test fault_ring_test phys_memory_test \
  lpae_pgtable_test pgtable_page_pool_test iommu_server_test kv_store_test \
  iommud_integration_test iommud_resource_test
tsan: deps
	cmake -S . -B build-tsan -G Ninja $(LAUNCHER) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(WERROR) -DIOMMU_BUILD_BENCHMARKS=OFF \
	  -DIOMMU_CORE_ONLY=OFF -DCMAKE_CXX_COMPILER=clang++ -DIOMMU_SANITIZE=thread -DIOMMU_THREAD_SAFETY=ON
	cmake --build build-tsan -j $(JOBS) --target $(TSAN_TARGETS)
	cd build-tsan && TSAN_OPTIONS="suppressions=$(CURDIR)/core/testing/tsan.supp $(TSAN_OPTIONS)" \
	  $(WITH_TMPDIR) ctest -j $(JOBS) $(CTEST_FLAGS) -R '$(TSAN_TESTS)' -E '$(TSAN_EXCLUDE)'

# The Debian packages iommud, iommuctl and libiommu-broker-client-dev, from a
# Release build as a packager makes it (no tests, warnings not errors), in
# $(DEB_DIR) (cmake/IommuPackaging.cmake).
DEB_DIR ?= build-deb
deb: deps
	cmake -S . -B $(DEB_DIR) -G Ninja $(LAUNCHER) -DCMAKE_BUILD_TYPE=Release -DIOMMU_BUILD_TESTS=OFF \
	  -DIOMMU_BUILD_BENCHMARKS=OFF $(CMAKE_FLAGS)
	cmake --build $(DEB_DIR) -j $(JOBS)
	cd $(DEB_DIR) && cpack -G DEB
	@ls -1 $(DEB_DIR)/*.deb

# The container images, each tagged :latest (the compose demo's) and
# :$(VERSION) (the Kubernetes example's). Needs a Docker engine.
images:
	docker build --network host -f deploy/Dockerfile --target iommud \
	  -t iommu-broker/iommud:latest -t iommu-broker/iommud:$(VERSION) .
	docker build --network host -f deploy/Dockerfile --target iommuctl \
	  -t iommu-broker/iommuctl:latest -t iommu-broker/iommuctl:$(VERSION) .
	docker build --network host \
	  -t iommu-broker/prometheus:latest -t iommu-broker/prometheus:$(VERSION) deploy/prometheus

# The docker-compose demo end to end: images built, stack up, dashboards, rules
# and alerts checked against its Prometheus, torn down (tests/e2e/compose_test.py).
# Needs root (it starts a Docker engine if none runs).
e2e:
	@bash scripts/deps.sh e2e
	cd tests/e2e && /usr/bin/python3 compose_test.py

# Clang build that checks the ABSL_GUARDED_BY / ABSL_EXCLUSIVE_LOCKS_REQUIRED annotations.
thread-safety: deps
	cmake -S . -B build-clang -G Ninja $(LAUNCHER) -DCMAKE_BUILD_TYPE=Debug $(WERROR) -DIOMMU_BUILD_BENCHMARKS=OFF \
	  -DIOMMU_BUILD_TESTS=OFF \
	  -DCMAKE_CXX_COMPILER=clang++ -DIOMMU_THREAD_SAFETY=ON
	cmake --build build-clang -j $(JOBS)

# The libFuzzer targets (clang, ASan + UBSan), each run over its corpus for
# FUZZ_SECONDS, one process: <dir>/fuzz_corpus/<name> (the checked-in seeds
# and regression inputs, only read) plus build-fuzz/corpus/<name> (what the
# runs add). Fails on the first crash, leak, sanitizer report or timeout,
# leaving the input in build-fuzz/artifacts/ (keep it under
# <dir>/fuzz_corpus/<name> once fixed; `make test` replays that corpus).
# FUZZ_TARGETS=core/broker/broker_ops_fuzz runs one.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= core/broker/broker_ops_fuzz server/proto_convert_fuzz \
  server/topology_loader_fuzz server/request_scan_fuzz store/state_store_fuzz
# The soak at length: SOAK_SECONDS of mixed traffic (device clients under
# expiring sessions, clients vanishing mid-call, a hostile client, fault
# watchers; tests/iommud_soak_test.cc, which make test runs for 12 s), then
# the crash test: device clients while iommud is SIGKILLed SOAK_CYCLES times
# at random moments, everything acknowledged checked against their logs
# (tests/iommud_state_test.cc).
SOAK_SECONDS ?= 300
SOAK_CYCLES ?= 300
soak: build
	IOMMU_SOAK_SECONDS=$(SOAK_SECONDS) $(WITH_TMPDIR) $(BUILD_DIR)/tests/iommud_integration_test \
	  --gtest_filter='SoakTest.*'
	IOMMU_CRASH_CYCLES=$(SOAK_CYCLES) $(WITH_TMPDIR) $(BUILD_DIR)/tests/iommud_integration_test \
	  --gtest_filter='StateTest.CrashCycles*'

fuzz: deps
	cmake -S . -B build-fuzz -G Ninja $(LAUNCHER) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(WERROR) \
	  -DCMAKE_CXX_COMPILER=clang++ -DIOMMU_FUZZ=ON
	cmake --build build-fuzz -j $(JOBS) --target $(notdir $(FUZZ_TARGETS))
	@for t in $(FUZZ_TARGETS); do \
	  bin=build-fuzz/$$t; name=$$(basename $${t%_fuzz}); corpus=$$(dirname $$t)/fuzz_corpus/$$name; \
	  mkdir -p build-fuzz/corpus/$$name build-fuzz/artifacts; \
	  echo "== $$t for $(FUZZ_SECONDS)s"; \
	  $$bin -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	    -artifact_prefix=build-fuzz/artifacts/$$name- \
	    build-fuzz/corpus/$$name $$corpus || exit 1; \
	done

# Every C++ file of the repository in the house style (.clang-format: Google,
# 100 columns). format rewrites them; format-check fails naming the files that
# differ (CI runs it).
CXX_SOURCES = $(shell git ls-files '*.h' '*.cc')
format: deps
	clang-format -i $(CXX_SOURCES)

format-check: deps
	@bad=$$(for f in $(CXX_SOURCES); do clang-format --dry-run -Werror $$f >/dev/null 2>&1 || echo $$f; done); \
	if [ -n "$$bad" ]; then echo "not clang-formatted (run make format):"; echo "$$bad"; exit 1; fi
	@python3 scripts/spdx.py

ci: format-check test asan tsan e2e

clean:
	rm -rf build build-asan build-tsan build-clang build-fuzz build-deb
