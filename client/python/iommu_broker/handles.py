"""Handles for what the daemon hands out: buffers, mappings, allocations, domains.

A handle wraps the daemon's response message (`.info`; its fields read as
attributes: `m.dma_addr`) and knows how to give the resource back. Used as a
context manager it releases on exit; `release()` does it explicitly (once;
later calls are no-ops) and `detach()` keeps the resource alive past the
`with` block. Handles never release from a finalizer: Python's collection
time is not a lifetime.

Not thread-safe: one thread owns a handle (the Client under it is
thread-safe).
"""


class Handle:
    """Base: one daemon resource, released at most once."""

    _FIELDS = ()  # shown by repr, in order

    def __init__(self, client, info):
        self._client = client
        self.info = info
        self._released = False

    def __getattr__(self, name):
        # Only called for attributes not found normally: the message's fields.
        if name.startswith("_") or name == "info":
            raise AttributeError(name)
        return getattr(self.info, name)

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Gives the resource back to the daemon (raises IommuError on failure)."""
        if self._released:
            return
        self._release()
        self._released = True

    def detach(self):
        """Forgets the resource without releasing it; returns the info message."""
        self._released = True
        return self.info

    def _release(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.release()
            return
        # Unwinding: release best-effort so the original error is the one seen.
        try:
            self.release()
        except Exception:  # noqa: BLE001 - the in-flight exception wins
            pass

    def __repr__(self):
        fields = ", ".join(f"{f}={_fmt(getattr(self.info, f))}" for f in self._FIELDS)
        state = ", released" if self._released else ""
        return f"{type(self).__name__}({fields}{state})"


def _fmt(value):
    return hex(value) if isinstance(value, int) and not isinstance(value, bool) else repr(value)


class Buffer(Handle):
    """Pinned pages owned by a device (AllocBuffer); released with FreeBuffer."""

    _FIELDS = ("buffer_id", "size_bytes", "pool")

    def _release(self):
        self._client.free_buffer(self.info.buffer_id)

    def refresh(self) -> "Buffer":
        """Re-reads the buffer (e.g. its map_count) from the daemon."""
        self.info = self._client.get_buffer(self.info.buffer_id)
        return self


class Mapping(Handle):
    """A dma_map_page mapping (Map); released with Unmap."""

    _FIELDS = ("dma_addr", "mapping_id", "domain_id", "iova_size_bytes")

    def _release(self):
        self._client.unmap(self.info.dma_addr)


class SgMapping(Handle):
    """A dma_map_sg mapping (MapSg); released with UnmapSg."""

    _FIELDS = ("iova", "iova_size_bytes", "segment_count", "mapping_id")

    @property
    def segments(self):
        """The DMA segments as (dma_addr, length_bytes) tuples, in order."""
        return [(s.dma_addr, s.length_bytes) for s in self.info.segments]

    def _release(self):
        self._client.unmap_sg(self.info.iova)


class Allocation(Handle):
    """A dma_alloc_attrs allocation (Alloc): pages plus their mapping; Free."""

    _FIELDS = ("dma_addr", "size_bytes", "buffer_id", "mapping_id")

    def _release(self):
        self._client.free(self.info.dma_addr)


class RangeMapping(Handle):
    """An iommu_map mapping at a caller-chosen IOVA (MapAt); UnmapRange."""

    _FIELDS = ("mapping_id", "domain_id")

    def __init__(self, client, info, iova, size_bytes):
        super().__init__(client, info)
        self.iova = iova
        self.size_bytes = size_bytes

    def _release(self):
        self._client.unmap_range(self.iova, self.size_bytes)

    def __repr__(self):
        return f"RangeMapping(iova={self.iova:#x}, size_bytes={self.size_bytes:#x}, " \
               f"mapping_id={self.info.mapping_id:#x})"


class Domain(Handle):
    """A domain the caller created (CreateDomain); released with DestroyDomain."""

    _FIELDS = ("domain_id", "smmu", "type", "granule_bytes")

    def _release(self):
        self._client.destroy_domain(self.info.domain_id)

    def refresh(self) -> "Domain":
        self.info = self._client.get_domain(self.info.domain_id)
        return self
