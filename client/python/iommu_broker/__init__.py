"""iommu_broker: the Python SDK of iommud.

    from iommu_broker import Client
    with Client("unix:/tmp/iommud.sock", device="nic0") as client:
        with client.buffer(16384) as buf, client.map(buf, direction="to_device") as m:
            print(hex(m.dma_addr))

See client/python/README.md.
"""
from iommu_broker import ops, pb
from iommu_broker.client import DEFAULT_TARGET, SESSION_HEADER, Client, TlsConfig
from iommu_broker.convert import phys
from iommu_broker.errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded,
                                 FailedPrecondition, Internal, InvalidArgument, IommuError,
                                 NotFound, OutOfRange, PermissionDenied, ResourceExhausted,
                                 Unauthenticated, Unavailable, Unimplemented, Unknown, error_for)
from iommu_broker.handles import (Allocation, Buffer, Domain, Handle, Mapping, RangeMapping,
                                  SgMapping)
from iommu_broker.streams import BatchStream, FaultWatch, Session

__all__ = [
    "Client", "TlsConfig", "DEFAULT_TARGET", "SESSION_HEADER", "ops", "pb", "phys",
    "Handle", "Buffer", "Mapping", "SgMapping", "Allocation", "RangeMapping", "Domain",
    "Session", "BatchStream", "FaultWatch", "IommuError", "error_for", "Cancelled", "Unknown",
    "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists", "PermissionDenied",
    "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented",
    "Internal", "Unavailable", "DataLoss", "Unauthenticated",
]
