# SPDX-License-Identifier: Apache-2.0
"""The SDK's public types as a user's type checker sees them: checked by
mypy --strict (ctest python_mypy), never run. Each assert_type fails the
check if a return type is missing, Any or wider than it should be."""
from typing import Iterator, assert_type

import iommu_broker as ib
from iommu_broker import messages, ops, pb


def uses_every_kind_of_return(client: ib.Client) -> None:
    assert_type(ib.__version__, str)
    with client.buffer(4096, placement="contiguous") as buf:
        assert_type(buf, ib.Buffer)
        assert_type(buf.placement, ib.Placement)
        assert_type(buf.runs, tuple[messages.PhysRun, ...])
        assert_type(buf.runs[0].phys_addr, int)
        assert_type(buf.info, messages.Buffer)
        with client.map(buf, direction=ib.DmaDirection.TO_DEVICE) as m:
            assert_type(m.dma_addr, int)
            t = client.translate(m.dma_addr, 64, ib.AccessKind.READ)
            assert_type(t, messages.TranslateResponse)
            assert_type(t.fault_type, ib.FaultType)
            assert_type(t.pages, tuple[messages.TranslatedPage, ...])
        with client.map_sg([buf], mode="merge") as sg:
            assert_type(sg.segments, tuple[messages.DmaSegment, ...])
    with client.create_domain("smmu0", "unmanaged") as domain:
        assert_type(domain.type, ib.DomainType)
        assert_type(domain.stage, ib.Stage)
        assert_type(domain.detach(), messages.Domain)
    assert_type(client.list_iommus(), list[messages.SmmuConfig])
    assert_type(client.get_stats().faults.by_type, dict[str, int])
    assert_type(client.get_iova_ranges().reserved[0].kind, ib.ReservedKind)
    assert_type(client.walk_domain(1), Iterator[messages.PageTableLeaf])
    assert_type(messages.TranslateRequest(pb.TranslateRequest()).stream_id, int | None)
    with client.batch() as batch:
        results = batch.submit([ops.translate(0x1000, 8)])
        assert_type(results[0].translate.fault_type, ib.FaultType)
    with client.watch_faults() as watch:
        for event in watch:
            assert_type(event.records[0].access, ib.AccessKind)
    with client.session(ttl_ms=5000) as session:
        assert_type(session.client, ib.Client)
        assert_type(session.keepalive_error, ib.IommuError | None)
