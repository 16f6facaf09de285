#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs the Debian packages iommu-broker builds, tests and runs with.
# The single list of the project's system dependencies; `make run`, `make test`
# and `make bench` call it first, the container images call it with a set name.
# Installs only what is missing.
#
#   scripts/deps.sh [dev]   everything: build, tests, benchmarks, sanitizers (default)
#   scripts/deps.sh build   what compiles iommud and iommuctl (the image build stage)
#   scripts/deps.sh runtime the shared libraries iommud and iommuctl run with (the images)
#   scripts/deps.sh e2e     the Docker engine and tools the compose end-to-end test uses
set -euo pipefail

BUILD=(
  build-essential cmake ninja-build pkg-config
  libabsl-dev
  protobuf-compiler libprotobuf-dev libgrpc++-dev protobuf-compiler-grpc   # API (proto/)
  libspdlog-dev prometheus-cpp-dev                                         # daemon (server/)
  liblmdb-dev libsqlite3-dev librocksdb-dev                                # state store (store/)
)
RUNTIME=(
  libabsl20220623 libprotobuf32 libgrpc++1.51 libgrpc29
  libspdlog1.10 libfmt9 libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0
  liblmdb0 libsqlite3-0 librocksdb7.8
)
DEV=(
  "${BUILD[@]}"
  clang libclang-rt-14-dev           # thread-safety analysis, sanitizer builds, libFuzzer (make fuzz)
  clang-format                       # make format / format-check (CI)
  ccache                             # the Makefile's builds compile through it
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-grpcio python3-protobuf python3-yaml                     # Python SDK, tests
  mypy-protobuf                                                            # Python SDK: type stubs (build)
  python3-setuptools python3-wheel python3-pip python3-venv                # Python SDK: pip install, its test
  python3-mypy                                                             # Python SDK: mypy --strict test
  prometheus openssl curl                                                  # make run, integration tests
  help2man groff-base                                                      # iommuctl.1 (the man page), its test
  dpkg-dev                                                                 # make deb: dpkg-shlibdeps (Depends)
)
E2E=(docker.io docker-compose debootstrap python3 python3-yaml prometheus curl)

case "${1:-dev}" in
  dev) PACKAGES=("${DEV[@]}") ;;
  build) PACKAGES=("${BUILD[@]}") ;;
  runtime) PACKAGES=("${RUNTIME[@]}") ;;
  e2e) PACKAGES=("${E2E[@]}") ;;
  *) echo "deps: unknown set \"$1\" (dev, build, runtime or e2e)" >&2; exit 2 ;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing Debian packages: ${missing[*]}" >&2
  echo "deps: run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists once if they are absent or older than a day.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
  apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}"
