#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs a test command with TMPDIR set to a fresh directory of its own, where
# every test puts its daemons' sockets, logs and state stores, its throw-away
# CAs and keys, and its venvs. The directory goes when the command passes and
# stays, named on stderr, when it fails: a run leaves nothing behind in /tmp
# except what explains a failure.
#   scripts/with_test_tmpdir.sh COMMAND [ARG...]
set -uo pipefail
if [ $# -eq 0 ]; then
  echo "usage: $0 COMMAND [ARG...]" >&2
  exit 2
fi
# Short, under /tmp whatever the caller's TMPDIR: Unix socket paths must fit
# in 108 bytes.
dir=$(mktemp -d /tmp/iommu-tests.XXXXXX) || exit 1
export TMPDIR="$dir"
"$@"
rc=$?
if [ "$rc" -eq 0 ]; then
  rm -rf "$dir"
else
  echo "$0: test files kept in $dir" >&2
fi
exit "$rc"
