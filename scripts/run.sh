#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `make run`: iommud on the built-in default topology, plus `iommuctl simulate`
# demo traffic (one client per device profile) when iommuctl is built, so every
# metric moves. Prints where to reach it; Ctrl-C stops everything.
# Its state store is $BUILD_DIR/iommud-state, so a second `make run` finds the
# first one's domains, buffers and mappings (delete the directory to start
# afresh).
# Overrides: BUILD_DIR, IOMMUD_SOCKET, IOMMUD_TCP, IOMMUD_METRICS, IOMMUD_STATE_DIR, IOMMUD_FLAGS.
set -euo pipefail

BUILD_DIR=${BUILD_DIR:-build}
IOMMUD=$BUILD_DIR/server/iommud
IOMMUCTL=$BUILD_DIR/client/iommuctl
SOCKET=${IOMMUD_SOCKET:-/tmp/iommud.sock}
TCP=${IOMMUD_TCP:-127.0.0.1:50051}
METRICS=${IOMMUD_METRICS:-127.0.0.1:9477}
STATE_DIR=${IOMMUD_STATE_DIR:-$BUILD_DIR/iommud-state}
PROFILES=(nic nvme gpu camera untrusted)

if [ ! -x "$IOMMUD" ]; then
  echo "run: $IOMMUD is not built (make build)" >&2
  exit 1
fi

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "run: stopping..."
  # Traffic first, then the daemon (it drains on SIGTERM).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "run: stopped."
}
trap stop INT TERM EXIT

# shellcheck disable=SC2086
"$IOMMUD" --listen="unix:$SOCKET,$TCP" --metrics_listen="$METRICS" --state_dir="$STATE_DIR" \
  ${IOMMUD_FLAGS:-} &
daemon_pid=$!
pids+=("$daemon_pid")

for _ in $(seq 1 100); do
  if curl -sf "http://$METRICS/metrics" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$daemon_pid" 2>/dev/null; then
    echo "run: iommud exited at start (see its log above)" >&2
    exit 1
  fi
  sleep 0.1
done

traffic="none"
if [ -x "$IOMMUCTL" ]; then
  for profile in "${PROFILES[@]}"; do
    "$IOMMUCTL" --target="unix:$SOCKET" simulate --profile="$profile" >/dev/null 2>&1 &
    pids+=("$!")
  done
  traffic="iommuctl simulate --profile=${PROFILES[*]}"
else
  echo "run: $IOMMUCTL is not built yet, so no demo traffic; iommud runs alone."
fi

cat <<BANNER

  iommud is serving the default topology.
    gRPC      unix:$SOCKET   and   $TCP   (--auth=none: demo only)
    metrics   http://$METRICS/metrics
    state     $STATE_DIR   (survives a restart; rm -r it to start afresh)
    traffic   $traffic
  Try:
    $IOMMUCTL --target=unix:$SOCKET --device=nic0 stats
    curl -s http://$METRICS/metrics | grep ^iommu_iotlb
  Ctrl-C stops everything.

BANNER

wait "$daemon_pid"
