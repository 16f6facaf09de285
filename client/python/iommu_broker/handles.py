# SPDX-License-Identifier: Apache-2.0
"""Handles for what the daemon hands out: buffers, mappings, allocations, domains.

A handle is the typed view of the daemon's response (`m.dma_addr`,
`domain.type` as a DomainType member; see iommu_broker.messages) that also
knows how to give the resource back. Used as a context manager it releases
on exit; `release()` does it explicitly (once; later calls are no-ops) and
`detach()` keeps the resource alive past the `with` block. Handles never
release from a finalizer: Python's collection time is not a lifetime.
`info` is the plain view of the response (what `detach()` returns).

Not thread-safe: one thread owns a handle (the Client under it is
thread-safe).
"""
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Optional, TypeVar

from google.protobuf.message import Message

from iommu_broker import messages
from iommu_broker._generated.iommu.v1 import dma_pb2, domain_pb2, memory_pb2
from iommu_broker._proto_view import View

if TYPE_CHECKING:  # a cycle at run time: the client makes handles
    from iommu_broker.client import Client

M = TypeVar("M", bound=Message)
V = TypeVar("V", bound="View[Any]")  # the view of M
_H = TypeVar("_H", bound="Handle[Any, Any]")


class Handle(View[M], Generic[M, V]):
    """Base: one daemon resource, released at most once. Compared by
    identity (two handles are two resources), unlike plain views."""

    _FIELDS: tuple[str, ...] = ()  # shown by repr, in order
    _VIEW: type[V]  # the view class of the response, set by each handle

    def __init__(self, client: "Client", message: M) -> None:
        super().__init__(message)
        self._client = client
        self._released = False

    @property
    def info(self) -> V:
        """The plain view of the response."""
        return self._VIEW(self._pb)

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Gives the resource back to the daemon (raises IommuError on failure)."""
        if self._released:
            return
        self._release()
        self._released = True

    def detach(self) -> V:
        """Forgets the resource without releasing it; returns `info`."""
        self._released = True
        return self.info

    def _release(self) -> None:
        raise NotImplementedError

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if exc_type is None:
            self.release()
            return
        # Unwinding: release best-effort so the original error is the one seen.
        try:
            self.release()
        except Exception:  # noqa: BLE001 - the in-flight exception wins
            pass

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={_fmt(getattr(self, f))}" for f in self._FIELDS)
        state = ", released" if self._released else ""
        return f"{type(self).__name__}({fields}{state})"


def _fmt(value: object) -> str:
    return hex(value) if type(value) is int else repr(value)


class Buffer(Handle[memory_pb2.Buffer, messages.Buffer], messages.Buffer):
    """Pinned pages owned by a device (AllocBuffer); released with FreeBuffer."""

    _VIEW = messages.Buffer
    _FIELDS = ("buffer_id", "size_bytes", "pool")

    def _release(self) -> None:
        self._client.free_buffer(self.buffer_id)

    def refresh(self) -> "Buffer":
        """Re-reads the buffer (e.g. its map_count) from the daemon."""
        self._pb = self._client.get_buffer(self.buffer_id)._pb
        return self


class Mapping(Handle[dma_pb2.MapResponse, messages.MapResponse], messages.MapResponse):
    """A dma_map_page mapping (Map); released with Unmap."""

    _VIEW = messages.MapResponse
    _FIELDS = ("dma_addr", "mapping_id", "domain_id", "iova_size_bytes")

    def _release(self) -> None:
        self._client.unmap(self.dma_addr)


class SgMapping(Handle[dma_pb2.MapSgResponse, messages.MapSgResponse], messages.MapSgResponse):
    """A dma_map_sg mapping (MapSg); released with UnmapSg. `segments` are
    messages.DmaSegment views (dma_addr, length_bytes), in order."""

    _VIEW = messages.MapSgResponse
    _FIELDS = ("iova", "iova_size_bytes", "segment_count", "mapping_id")

    def _release(self) -> None:
        self._client.unmap_sg(self.iova)


class Allocation(Handle[dma_pb2.AllocResponse, messages.AllocResponse], messages.AllocResponse):
    """A dma_alloc_attrs allocation (Alloc): pages plus their mapping; Free."""

    _VIEW = messages.AllocResponse
    _FIELDS = ("dma_addr", "size_bytes", "buffer_id", "mapping_id")

    def _release(self) -> None:
        self._client.free(self.dma_addr)


class RangeMapping(Handle[dma_pb2.MapAtResponse, messages.MapAtResponse], messages.MapAtResponse):
    """An iommu_map mapping at a caller-chosen IOVA (MapAt); UnmapRange.
    `iova` and `size_bytes` are the range the caller asked for."""

    _VIEW = messages.MapAtResponse

    def __init__(self, client: "Client", message: dma_pb2.MapAtResponse, iova: int,
                 size_bytes: int) -> None:
        super().__init__(client, message)
        self.iova = iova
        self.size_bytes = size_bytes

    def _release(self) -> None:
        self._client.unmap_range(self.iova, self.size_bytes)

    def __repr__(self) -> str:
        state = ", released" if self._released else ""
        return f"RangeMapping(iova={self.iova:#x}, size_bytes={self.size_bytes:#x}, " \
               f"mapping_id={self.mapping_id:#x}{state})"


class Domain(Handle[domain_pb2.Domain, messages.Domain], messages.Domain):
    """A domain the caller created (CreateDomain); released with DestroyDomain."""

    _VIEW = messages.Domain
    _FIELDS = ("domain_id", "smmu", "type", "granule_bytes")

    def _release(self) -> None:
        self._client.destroy_domain(self.domain_id)

    def refresh(self) -> "Domain":
        """Re-reads the domain (its devices, mappings) from the daemon."""
        self._pb = self._client.get_domain(self.domain_id)._pb
        return self
