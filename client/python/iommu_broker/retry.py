# SPDX-License-Identifier: Apache-2.0
"""Retries on UNAVAILABLE and the request ids that make them exactly-once.

Every mutating call carries `iommu-request-id: <id>` metadata (a Batch
message its BatchRequest.request_id), and every retry of it the same id: the
daemon answers an id it has already applied with the original reply (and
trailing metadata `iommu-request-replayed: 1`) instead of applying the call
twice, so a call cut off by a daemon restart is retried safely
(docs/design.md#request-ids). Reads are retried as they are.

An id is 32 lowercase hex digits of 128 bits from the kernel's CSPRNG
(os.urandom): unique without coordination between clients, and unguessable,
so no client can have its call answered with another's reply.
"""
import os
import time
import grpc

from iommu_broker.errors import Unavailable, from_rpc_error

Metadata = tuple[tuple[str, str], ...]

REQUEST_ID_HEADER = "iommu-request-id"
REPLAYED_HEADER = "iommu-request-replayed"
INITIAL_BACKOFF_S = 0.02
MAX_BACKOFF_S = 1.0

# The daemon is local: reconnect within ~100 ms and never back off past 1 s
# (gRPC's default grows to 2 min), so a restarted daemon is found within
# ~1 s, well inside the timeout its callers retry in.
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (("grpc.initial_reconnect_backoff_ms", 100),
                     ("grpc.min_reconnect_backoff_ms", 100),
                     ("grpc.max_reconnect_backoff_ms", 1000))


def new_request_id() -> str:
    return os.urandom(16).hex()


# Any method will do to wait for the channel: the health check is cheap, and
# a daemon that does not serve it still answers (UNIMPLEMENTED).
_PROBE_METHOD = "/grpc.health.v1.Health/Check"


class Retrier:
    """The attempts of one call (or of one Batch message from its first
    break): on UNAVAILABLE, up to `retries` more with exponential backoff,
    all within `timeout` seconds of the Retrier's creation.

    Thread-compatible: one per call.
    """

    def __init__(self, channel: grpc.Channel, metadata: Metadata, timeout: float,
                 retries: int) -> None:
        self._channel = channel
        self._metadata = metadata
        self._timeout = timeout
        self._retries = retries
        self._deadline = time.monotonic() + timeout
        self._backoff = INITIAL_BACKOFF_S
        self.attempts = 1

    def remaining(self) -> float:
        """Seconds left of the deadline (0 once it has passed)."""
        return max(self._deadline - time.monotonic(), 0.0)

    def again(self, error: grpc.RpcError) -> None:
        """After an attempt failed with `error`: returns once the next
        attempt may start (the backoff slept and the daemon reachable), or
        raises the IommuError that ends the call."""
        if (error.code() != grpc.StatusCode.UNAVAILABLE or self.attempts > self._retries
                or time.monotonic() + self._backoff >= self._deadline):
            raise from_rpc_error(error) from None
        time.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
        self._await_daemon(error)
        self.attempts += 1

    def _await_daemon(self, error: grpc.RpcError) -> None:
        """Waits, until the deadline, for the channel to reach the daemon
        (gRPC's wait_for_ready on a probe call): any answer will do."""
        probe = self._channel.unary_unary(_PROBE_METHOD)  # bytes in and out
        try:
            probe(b"", timeout=self.remaining(), metadata=self._metadata, wait_for_ready=True)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise Unavailable(grpc.StatusCode.UNAVAILABLE,
                                  f"{error.details()} (still unreachable at the deadline, "
                                  f"{self._timeout:g} s, after {self.attempts} attempts)"
                                  ) from None
