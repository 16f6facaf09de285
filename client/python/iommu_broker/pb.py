"""The generated iommu.v1 messages and stubs, in one namespace.

`from iommu_broker import pb; pb.MapRequest(...)`. The modules are generated
at build time (client/python/gen_protos.py) into iommu_broker/_generated.
"""
try:
    from iommu_broker._generated.iommu.v1 import (  # noqa: F401
        common_pb2, device_pb2, device_pb2_grpc, dma_pb2, dma_pb2_grpc, domain_pb2,
        domain_pb2_grpc, memory_pb2, memory_pb2_grpc, session_pb2, session_pb2_grpc,
        stats_pb2, stats_pb2_grpc, topology_pb2)
except ImportError as e:  # pragma: no cover - a packaging error, said plainly
    raise ImportError(
        "iommu_broker: generated protobuf modules missing; import the package from the "
        "build tree (PYTHONPATH=build/client/python after `cmake --build build "
        "--target iommu_python`)") from e

_MODULES = (common_pb2, topology_pb2, dma_pb2, memory_pb2, domain_pb2, device_pb2,
            session_pb2, stats_pb2)

# Re-export every message and enum value by name: pb.MapRequest, pb.DMA_DIRECTION_TO_DEVICE.
for _m in _MODULES:
    for _name in dir(_m):
        if _name[0].isupper() and _name != "DESCRIPTOR":
            globals()[_name] = getattr(_m, _name)
del _m, _name

DmaStub = dma_pb2_grpc.DmaStub
MemoryStub = memory_pb2_grpc.MemoryStub
DomainsStub = domain_pb2_grpc.DomainsStub
DevicesStub = device_pb2_grpc.DevicesStub
SessionsStub = session_pb2_grpc.SessionsStub
StatsStub = stats_pb2_grpc.StatsStub
