# SPDX-License-Identifier: Apache-2.0
"""Sessions (leases kept alive in the background), the Batch stream and the
WatchFaults stream."""
import queue
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional, Union

import grpc

from iommu_broker import messages, pb
from iommu_broker.errors import (IommuError, NotFound, ResourceExhausted, Unavailable, error_for,
                                 error_for_number, from_rpc_error)
from iommu_broker.retry import Retrier, new_request_id

if TYPE_CHECKING:  # a cycle at run time: the client makes these
    from iommu_broker.client import Client


class Session:
    """A lease (OpenSession): everything created through `session.client`
    belongs to it and is released by the daemon when the session closes or
    its lease runs out. A daemon thread renews the lease every ttl/3.

    Thread-safe: the keep-alive thread and the owner share only the Event and
    `keepalive_error`, which is written by the thread alone.
    """

    def __init__(self, client: "Client", session_id: int, ttl_ms: int,
                 keepalive: bool = True) -> None:
        self.id = session_id
        self.ttl_ms = ttl_ms
        self.client = client._bind(session_id=session_id)
        # The IommuError that stopped the keep-alive, if any.
        self.keepalive_error: Optional[IommuError] = None
        self._stop = threading.Event()
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        if keepalive:
            self._thread = threading.Thread(target=self._renew, name=f"iommu-session-{session_id}",
                                            daemon=True)
            self._thread.start()

    def _renew(self) -> None:
        interval_s = max(self.ttl_ms / 3000.0, 0.01)
        while not self._stop.wait(interval_s):
            try:
                self.client.keep_alive(self.id)
            except IommuError as e:
                self.keepalive_error = e
                if isinstance(e, NotFound):  # expired or closed elsewhere: nothing to renew
                    return

    def keep_alive(self) -> None:
        self.client.keep_alive(self.id)

    def stop_keepalive(self) -> None:
        """Stops renewing without closing: the lease then expires on the daemon
        (what happens when a client dies)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def close(self) -> None:
        """Stops the keep-alive and closes the session (once)."""
        if self._closed:
            return
        self.stop_keepalive()
        self._closed = True
        self.client.close_session(self.id)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the in-flight exception wins
            pass

    def __repr__(self) -> str:
        return f"Session(id={self.id}, ttl_ms={self.ttl_ms})"


_END = object()


class BatchStream:
    """One Batch bidirectional stream: `submit(ops)` sends one BatchRequest
    and returns its BatchResults (one per op, in order). Ops are pb.BatchOp
    messages (see the `iommu_broker.ops` builders); an op whose request names
    no device acts as the client's device (sent once per message, as
    BatchRequest.device, not copied into every op).

    A message the daemon would refuse whole (more than the client's
    max_batch_ops operations, a MapSg counting one more per segment, or more
    than its max_message_bytes) raises ResourceExhausted before it is sent;
    the stream stays usable.

    Each message carries a fresh request id. When the stream breaks with
    UNAVAILABLE (a daemon restart) before the response, the message is
    written again, with its sequence and id, on a new stream (retried as a
    unary call is, within the client's `timeout` from the break): the daemon
    answers one it applied before the restart with its original response.

    Thread-compatible: one thread submits at a time.
    """

    def __init__(self, client: "Client") -> None:
        self._client = client
        self._device = client.device
        self._sequence = 0
        self._closed = False
        self._open()

    def _open(self) -> None:
        self._requests: "queue.SimpleQueue[Union[pb.BatchRequest, object]]" = queue.SimpleQueue()
        self._call = self._client._dma.Batch(iter(self._requests.get, _END),
                                             metadata=self._client._metadata)

    def _reopen(self) -> None:
        self._requests.put(_END)  # ends the old call's request iterator
        self._open()

    def submit(self, ops: Iterable[pb.BatchOp],
               check: bool = False) -> list[messages.BatchResult]:
        """Runs `ops` (an iterable of pb.BatchOp) and returns the results,
        one per op, in order. With check=True the first failed op raises its
        IommuError."""
        if self._closed:
            raise ValueError("BatchStream is closed")
        request = pb.BatchRequest(sequence=self._sequence + 1, device=self._device,
                                  request_id=new_request_id())
        request.ops.extend(ops)
        segments = sum(len(op.map_sg.segments) for op in request.ops if op.HasField("map_sg"))
        if len(request.ops) + segments > self._client.max_batch_ops:
            raise ResourceExhausted(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Batch: {len(request.ops)} operations and {segments} MapSg segments, more than "
                f"max_batch_ops={self._client.max_batch_ops} (the daemon's --max_batch_ops) in "
                "one message; nothing was sent (submit fewer at once)")
        self._client._check_size(request)
        self._sequence += 1
        response = self._exchange(request)
        if response.sequence != self._sequence:
            raise error_for(grpc.StatusCode.INTERNAL,
                            f"sequence={response.sequence}: expected {self._sequence}")
        results = [messages.BatchResult(r) for r in response.results]
        if check:
            for r in results:
                if r.code != 0:
                    raise error_for_number(r.code, r.message)
        return results

    def _exchange(self, request: pb.BatchRequest) -> pb.BatchResponse:
        """Writes `request` and returns its response, writing it again on a
        new stream after each break with UNAVAILABLE while retries allow."""
        retry = None  # from the first break
        while True:
            self._requests.put(request)
            try:
                response: pb.BatchResponse = next(self._call)
                return response
            except StopIteration:
                raise Unavailable(grpc.StatusCode.UNAVAILABLE,
                                  "Batch stream ended by the daemon") from None
            except grpc.RpcError as e:
                if retry is None:
                    retry = Retrier(self._client._channel, self._client._metadata,
                                    self._client.timeout, self._client._retries)
                retry.again(e)
                self._reopen()

    def close(self) -> None:
        """Half-closes the stream and waits for the daemon to finish it.
        Every submit() was answered before it returned, so a stream the
        daemon's restart broke since is closed without an error: nothing was
        lost."""
        if self._closed:
            return
        self._closed = True
        self._requests.put(_END)
        try:
            for _ in self._call:
                pass
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
                raise from_rpc_error(e) from None

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if exc_type is not None:
            self._closed = True
            self._call.cancel()
            return
        self.close()


class FaultWatch:
    """The WatchFaults stream: iterate for messages.FaultEvent views (records
    with sequence numbers, and `lost`). Ends when cancelled (`cancel()`, or
    leaving the `with` block) or when the daemon drains.

    Thread-safe: cancel() may be called from any thread.
    """

    def __init__(self, call: Any) -> None:
        self._call = call  # the grpc call: an iterator of pb.FaultEvent
        self._cancelled = False

    def __iter__(self) -> Iterator[messages.FaultEvent]:
        try:
            for event in self._call:
                yield messages.FaultEvent(event)
        except grpc.RpcError as e:
            if self._cancelled and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(e) from None

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> "FaultWatch":
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.cancel()
