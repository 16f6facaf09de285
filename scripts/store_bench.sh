#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The state store's cost at the product level: iommud_rpc_bench (unary
# Map+Unmap and Batch of 512 maps then 512 unmaps, over the Unix socket) with
# each store configuration in turn, ROUNDS times alternating, so every
# configuration sees the same machine; prints each run's figures and the
# median per configuration.
#
#   scripts/store_bench.sh [build dir] [rounds=3] [threads=2] [seconds=3]
#   CONFIGS="--no_store;--store_engine=lmdb" scripts/store_bench.sh build
set -euo pipefail
B=${1:-build}; ROUNDS=${2:-3}; THREADS=${3:-2}; SECONDS_EACH=${4:-3}
CONFIGS=${CONFIGS:---no_store;--store_engine=lmdb;--store_engine=sqlite;--store_engine=rocksdb;--store_engine=lmdb --durability=power;--store_engine=sqlite --durability=power;--store_engine=rocksdb --durability=power}
IFS=';' read -r -a configs <<< "$CONFIGS"
out=$(mktemp)
for round in $(seq "$ROUNDS"); do
  for c in "${configs[@]}"; do
    # shellcheck disable=SC2086
    r=$("$B/tests/iommud_rpc_bench" "$THREADS" "$SECONDS_EACH" $c)
    mu=$(sed -n 's/^map_unmap *\([0-9.]*\) calls\/s.*/\1/p' <<< "$r" | head -1)
    bt=$(sed -n 's/^batch: [0-9.]* M map+unmap ops\/s (\([0-9.]*\) M maps\/s)/\1/p' <<< "$r")
    printf '%s\t%s\t%s\t%s\n' "$round" "$c" "$mu" "$bt" | tee -a "$out"
  done
done
echo
echo "median over $ROUNDS rounds: config, unary Map+Unmap calls/s, Batch M maps/s"
for c in "${configs[@]}"; do
  mu=$(awk -F'\t' -v c="$c" '$2 == c {print $3}' "$out" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  bt=$(awk -F'\t' -v c="$c" '$2 == c {print $4}' "$out" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '%-40s %10s %8s\n' "$c" "$mu" "$bt"
done
rm -f "$out"
