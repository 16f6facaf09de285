#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Instructions per batched map+unmap of one side of `iommuctl bench
# --api=batch` (steady state: each message unmaps what the previous one mapped
# and maps batch_size more). The measured process runs under callgrind with
# instrumentation off until the stream is warm, then on for a fixed window;
# the ops in the window come from the daemon's Batch message counter. That
# counter runs ahead of the messages processed inside the window (up to ~10%
# off); exact: divide the total by 1024 x the calls of BatchReactor::Process
# (daemon) or BatchStream::Send (client) recorded in the profile.
#   scripts/batch_callgrind.sh <build dir> <out prefix> d|c   (d: iommud, c: iommuctl)
set -u
B=$1; OUT=$2; SIDE=$3; S=/tmp/batch-cg$$.sock; P=${METRICS_PORT:-39517}; N=${BATCH_SIZE:-1024}
VG="valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$OUT.$SIDE.cg"
DV=""; CV=""; [ "$SIDE" = d ] && DV=$VG; [ "$SIDE" = c ] && CV=$VG
ST=$(mktemp -d /tmp/batch-cg.XXXXXX)
# shellcheck disable=SC2086
$DV "$B/server/iommud" --listen=unix:$S --metrics_listen=127.0.0.1:$P --state_dir=$ST/state \
  ${IOMMUD_FLAGS:-} > "$OUT.$SIDE.log" 2>&1 & D=$!
sleep 5
# Under valgrind the first connection can miss the client's 100 ms handshake.
for _ in $(seq 30); do "$B/client/iommuctl" --target=unix:$S health > /dev/null 2>&1 && break; done
$CV "$B/client/iommuctl" --target=unix:$S --device=nic0 --json bench --dma_mask_bits=64 --seconds=25 \
  --api=batch --batch_size=$N > "$OUT.$SIDE.bench" 2>&1 & C=$!
sleep 5
[ "$SIDE" = d ] && T=$D || T=$C
msgs() { curl -s 127.0.0.1:$P/metrics | grep 'grpc_server_msg_received_total{grpc_method="Batch"' | awk '{print $2}'; }
m1=$(msgs); callgrind_control -i on $T > /dev/null; sleep 12; callgrind_control -i off $T > /dev/null; m2=$(msgs)
wait $C; kill $D; wait $D; rm -rf "$ST"
ir=$(callgrind_annotate "$OUT.$SIDE.cg" 2>/dev/null | grep -m1 "PROGRAM TOTALS" | awk '{gsub(",","",$1); print $1}')
echo "$SIDE messages $m1 -> $m2, Ir $ir, per map+unmap $(python3 -c "print(round($ir / (($m2 - $m1) * $N)))")"
