# SPDX-License-Identifier: Apache-2.0
"""The generated iommu.v1 messages and stubs, in one namespace.

`from iommu_broker import pb; pb.MapRequest(...)`: every message, enum
wrapper and enum value by name (pb.DMA_DIRECTION_TO_DEVICE), and the client
stubs (pb.DmaStub, ...). Requests are built from these; what the SDK returns
are the typed views of iommu_broker.messages. The modules are generated at
build time (client/python/gen_protos.py) into iommu_broker/_generated, with
type stubs.
"""
from iommu_broker._generated.iommu.v1.common_pb2 import *  # noqa: F401,F403
from iommu_broker._generated.iommu.v1.device_pb2 import *  # noqa: F401,F403
from iommu_broker._generated.iommu.v1.device_pb2_grpc import DevicesStub as DevicesStub
from iommu_broker._generated.iommu.v1.dma_pb2 import *  # noqa: F401,F403
from iommu_broker._generated.iommu.v1.dma_pb2_grpc import DmaStub as DmaStub
from iommu_broker._generated.iommu.v1.domain_pb2 import *  # noqa: F401,F403
from iommu_broker._generated.iommu.v1.domain_pb2_grpc import DomainsStub as DomainsStub
from iommu_broker._generated.iommu.v1.memory_pb2 import *  # noqa: F401,F403
from iommu_broker._generated.iommu.v1.memory_pb2_grpc import MemoryStub as MemoryStub
from iommu_broker._generated.iommu.v1.session_pb2 import *  # noqa: F401,F403
from iommu_broker._generated.iommu.v1.session_pb2_grpc import SessionsStub as SessionsStub
from iommu_broker._generated.iommu.v1.stats_pb2 import *  # noqa: F401,F403
from iommu_broker._generated.iommu.v1.stats_pb2_grpc import StatsStub as StatsStub
from iommu_broker._generated.iommu.v1.topology_pb2 import *  # noqa: F401,F403

del DESCRIPTOR  # noqa: F821 - each module's; none is this namespace's
