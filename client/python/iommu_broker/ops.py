"""Builders of pb.BatchOp for BatchStream.submit. An op built without a
device acts as the submitting client's device."""
from iommu_broker import convert, pb


def map(mem, offset_bytes=0, length_bytes=None, direction="bidirectional", attrs=None,  # noqa: A001
        device=""):
    return pb.BatchOp(map=pb.MapRequest(
        device=device, mem=convert.memref(mem, offset_bytes, length_bytes),
        direction=convert.direction(direction), attrs=convert.attrs(attrs)))


def unmap(dma_addr, device=""):
    return pb.BatchOp(unmap=pb.UnmapRequest(device=device, dma_addr=dma_addr))


def map_sg(segments, mode="merge", direction="bidirectional", attrs=None, device=""):
    return pb.BatchOp(map_sg=pb.MapSgRequest(
        device=device, segments=[convert.memref(s) for s in segments],
        mode=convert.sg_mode(mode), direction=convert.direction(direction),
        attrs=convert.attrs(attrs)))


def unmap_sg(dma_addr, device=""):
    return pb.BatchOp(unmap_sg=pb.UnmapSgRequest(device=device, dma_addr=dma_addr))


def translate(iova, length_bytes, access="read", privileged=False, device=""):
    return pb.BatchOp(translate=pb.TranslateOp(
        device=device, iova=iova, length_bytes=length_bytes, access=convert.access(access),
        privileged=privileged))
