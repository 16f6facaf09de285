# SPDX-License-Identifier: Apache-2.0
"""Every iommu.v1 enum as an IntEnum (iommu_broker._proto_view.ProtoEnum):
DmaDirection, Placement, DomainType, SgMode, Stage, AccessKind, FaultType,
ReservedKind, RegionKind, ... Members drop the enum's prefix
(`DomainType.DMA_FQ` is DOMAIN_TYPE_DMA_FQ) and compare equal to the proto
numbers. Every enum field the SDK returns reads as one of these; arguments
take a member, a number or a short name ("dma_fq").

Generated at build time from proto/iommu/v1 (gen_protos.py).
"""
from iommu_broker._generated import enums as _enums
from iommu_broker._generated.enums import *  # noqa: F401,F403

__all__: list[str] = []
__all__ += _enums.__all__  # a form type checkers follow
