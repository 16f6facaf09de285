# SPDX-License-Identifier: Apache-2.0
"""Python values to iommu.v1 request fields, in one place.

Enums take a member of iommu_broker.enums, a proto enum number, or a short
case-insensitive name without the enum's prefix ("to_device", "merge",
"dma_fq", "read"); memory takes a Buffer or Allocation handle, a pb.MemRef,
or a buffer id.
"""
import re
from typing import Any, Mapping, Optional, TypeVar, Union, cast

from iommu_broker import pb
from iommu_broker.enums import AccessKind, DmaDirection, DomainType, Placement, SgMode
from iommu_broker.handles import Allocation, Buffer
from iommu_broker._proto_view import ProtoEnum

_E = TypeVar("_E", bound=ProtoEnum)
# An enum argument: a member, a number or a short name.
EnumArg = Union[int, str, None]
MemArg = Union[Buffer, Allocation, pb.MemRef, int]
AttrsArg = Union[pb.DmaAttrs, Mapping[str, Any], None]


def enum_value(enum_type: type[_E], value: EnumArg) -> int:
    """`value` as a number of `enum_type` (None: 0, UNSPECIFIED). Names are
    matched with or without the proto's prefix ("to_device",
    "DMA_DIRECTION_TO_DEVICE"). Numbers pass through unchecked: the daemon
    validates them."""
    if value is None:
        return 0
    if isinstance(value, str):
        name = value.upper()
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum_type.__name__).upper() + "_"
        for candidate in (name, name.removeprefix(prefix), prefix + name):
            if candidate in enum_type.__members__:
                return int(enum_type[candidate])
        names = [m.name.lower() for m in enum_type][1:]
        raise ValueError(f"{value!r}: not one of {names}")
    return int(value)


def direction(value: EnumArg) -> "pb.DmaDirection.ValueType":
    return cast("pb.DmaDirection.ValueType", enum_value(DmaDirection, value))


def sg_mode(value: EnumArg) -> "pb.SgMode.ValueType":
    return cast("pb.SgMode.ValueType", enum_value(SgMode, value))


def access(value: EnumArg) -> "pb.AccessKind.ValueType":
    return cast("pb.AccessKind.ValueType", enum_value(AccessKind, value))


def placement(value: EnumArg) -> "pb.Placement.ValueType":
    return cast("pb.Placement.ValueType", enum_value(Placement, value))


def domain_type(value: EnumArg) -> "pb.DomainType.ValueType":
    return cast("pb.DomainType.ValueType", enum_value(DomainType, value))


def attrs(value: AttrsArg) -> pb.DmaAttrs:
    """A pb.DmaAttrs from None, a pb.DmaAttrs or a dict of its fields."""
    if value is None:
        return pb.DmaAttrs()
    if isinstance(value, pb.DmaAttrs):
        return value
    return pb.DmaAttrs(**value)


def phys(phys_addr: int, length_bytes: int) -> pb.MemRef:
    """A raw physical range (admin only)."""
    return pb.MemRef(phys_addr=phys_addr, length_bytes=length_bytes)


def memref(mem: MemArg, offset_bytes: int = 0, length_bytes: Optional[int] = None) -> pb.MemRef:
    """A pb.MemRef. For a handle, length defaults to the rest of the buffer."""
    if isinstance(mem, pb.MemRef):
        return mem
    if isinstance(mem, (Buffer, Allocation)):
        if length_bytes is None:
            length_bytes = max(mem.size_bytes - offset_bytes, 0)
        return pb.MemRef(buffer_id=mem.buffer_id, offset_bytes=offset_bytes,
                         length_bytes=length_bytes)
    if isinstance(mem, int):
        return pb.MemRef(buffer_id=mem, offset_bytes=offset_bytes, length_bytes=length_bytes or 0)
    raise TypeError(f"mem: expected a Buffer, Allocation, pb.MemRef or buffer id, not "
                    f"{type(mem).__name__}")
