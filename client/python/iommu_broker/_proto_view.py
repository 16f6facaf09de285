# SPDX-License-Identifier: Apache-2.0
"""The bases of the generated enums and message views (gen_protos.py).

ProtoEnum: an iommu.v1 enum as an IntEnum, so a member still compares equal
to the proto's number (`DomainType.DMA == pb.DOMAIN_TYPE_DMA`). A number the
SDK does not know (a newer daemon's) reads as a member named
`UNRECOGNIZED_<n>` with that value, not an error.

View: what the SDK returns for a message: its fields as typed read-only
properties (enums as ProtoEnum members, messages as views, repeated fields
as tuples, maps as dicts), `HasField` and `WhichOneof` as on the message,
and `to_proto()` for a copy of the message itself. Views of equal messages
are equal; like messages, views are not hashable. Read-only, so thread-safe.
"""
import enum
from typing import Generic, Optional, TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)
_E = TypeVar("_E", bound="ProtoEnum")


class ProtoEnum(enum.IntEnum):
    @classmethod
    def _missing_(cls: "type[_E]", value: object) -> Optional[_E]:
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNRECOGNIZED_{value}"
        member._value_ = value
        return member


class View(Generic[M]):
    __slots__ = ("_pb",)

    def __init__(self, message: M) -> None:
        self._pb = message

    def to_proto(self) -> M:
        """A copy of the message (changing it does not change the view)."""
        copy: M = type(self._pb)()
        copy.CopyFrom(self._pb)
        return copy

    def HasField(self, field_name: str) -> bool:  # noqa: N802 - the protobuf name
        return bool(self._pb.HasField(field_name))

    def WhichOneof(self, oneof_group: str) -> Optional[str]:  # noqa: N802 - the protobuf name
        name: Optional[str] = self._pb.WhichOneof(oneof_group)
        return name

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, View) or type(other) is not type(self):
            return NotImplemented
        return bool(self._pb == other._pb)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f, _ in self._pb.ListFields())
        return f"{type(self).__name__}({fields})"
