# SPDX-License-Identifier: Apache-2.0
"""Builders of pb.BatchOp for BatchStream.submit. An op built without a
device acts as the submitting client's device."""
from typing import Iterable, Optional

from iommu_broker import convert, pb
from iommu_broker.convert import AttrsArg, EnumArg, MemArg


def map(mem: MemArg, offset_bytes: int = 0, length_bytes: Optional[int] = None,  # noqa: A001
        direction: EnumArg = "bidirectional", attrs: AttrsArg = None,
        device: str = "") -> pb.BatchOp:
    return pb.BatchOp(map=pb.MapRequest(
        device=device, mem=convert.memref(mem, offset_bytes, length_bytes),
        direction=convert.direction(direction), attrs=convert.attrs(attrs)))


def unmap(dma_addr: int, device: str = "") -> pb.BatchOp:
    return pb.BatchOp(unmap=pb.UnmapRequest(device=device, dma_addr=dma_addr))


def map_sg(segments: Iterable[MemArg], mode: EnumArg = "merge",
           direction: EnumArg = "bidirectional", attrs: AttrsArg = None,
           device: str = "") -> pb.BatchOp:
    return pb.BatchOp(map_sg=pb.MapSgRequest(
        device=device, segments=[convert.memref(s) for s in segments],
        mode=convert.sg_mode(mode), direction=convert.direction(direction),
        attrs=convert.attrs(attrs)))


def unmap_sg(dma_addr: int, device: str = "") -> pb.BatchOp:
    return pb.BatchOp(unmap_sg=pb.UnmapSgRequest(device=device, dma_addr=dma_addr))


def translate(iova: int, length_bytes: int, access: EnumArg = "read", privileged: bool = False,
              device: str = "") -> pb.BatchOp:
    return pb.BatchOp(translate=pb.TranslateOp(
        device=device, iova=iova, length_bytes=length_bytes, access=convert.access(access),
        privileged=privileged))
