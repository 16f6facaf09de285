"""Python values to iommu.v1 request fields, in one place.

Enums take a proto enum number or a short case-insensitive name without the
enum's prefix ("to_device", "merge", "dma_fq", "read"); memory takes a Buffer
or Allocation handle, a pb.MemRef, or a buffer id.
"""
from iommu_broker import pb
from iommu_broker.handles import Allocation, Buffer


def enum_value(enum_type, prefix: str, value) -> int:
    """`value` as a number of `enum_type` (its names start with `prefix`).
    Numbers pass through unchecked: the daemon validates them."""
    if value is None:
        return 0
    if isinstance(value, str):
        name = value.upper()
        if not name.startswith(prefix):
            name = prefix + name
        try:
            return enum_type.Value(name)
        except ValueError:
            names = [n[len(prefix):].lower() for n in enum_type.keys()][1:]
            raise ValueError(f"{value!r}: not one of {names}") from None
    return int(value)


def direction(value) -> int:
    return enum_value(pb.DmaDirection, "DMA_DIRECTION_", value)


def sg_mode(value) -> int:
    return enum_value(pb.SgMode, "SG_MODE_", value)


def access(value) -> int:
    return enum_value(pb.AccessKind, "ACCESS_KIND_", value)


def placement(value) -> int:
    return enum_value(pb.Placement, "PLACEMENT_", value)


def domain_type(value) -> int:
    return enum_value(pb.DomainType, "DOMAIN_TYPE_", value)


def attrs(value):
    """A pb.DmaAttrs from None, a pb.DmaAttrs or a dict of its fields."""
    if value is None:
        return pb.DmaAttrs()
    if isinstance(value, dict):
        return pb.DmaAttrs(**value)
    return value


def phys(phys_addr: int, length_bytes: int):
    """A raw physical range (admin only)."""
    return pb.MemRef(phys_addr=phys_addr, length_bytes=length_bytes)


def memref(mem, offset_bytes: int = 0, length_bytes=None):
    """A pb.MemRef. For a handle, length defaults to the rest of the buffer."""
    if isinstance(mem, pb.MemRef):
        return mem
    if isinstance(mem, (Buffer, Allocation)):
        if length_bytes is None:
            length_bytes = max(mem.info.size_bytes - offset_bytes, 0)
        return pb.MemRef(buffer_id=mem.info.buffer_id, offset_bytes=offset_bytes,
                         length_bytes=length_bytes)
    if isinstance(mem, int):
        return pb.MemRef(buffer_id=mem, offset_bytes=offset_bytes, length_bytes=length_bytes or 0)
    raise TypeError(f"mem: expected a Buffer, Allocation, pb.MemRef or buffer id, not {type(mem).__name__}")
