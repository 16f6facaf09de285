# SPDX-License-Identifier: Apache-2.0
"""dma_example: what a device driver does through iommud, with the Python SDK.

    python3 dma_example.py [--target=unix:/run/iommud/iommud.sock] [--device=nic0]

Allocates a physically contiguous 64 KiB buffer (the daemon's pinned pages),
maps its first 16 KiB for the device to read (dma_map_page, DMA_TO_DEVICE),
then plays the device through the SMMU: a read at dma_addr + 4 KiB translates
to the buffer's page 1, a write faults (permission: the mapping is read-only
for the device). After the unmap, the same read faults (translation), and the
fault stream reports the write's fault. The buffer is freed last. Each step
prints one line; the exit status is 0 when every step did what it says.

Needs the installed package (`pip install` of client/python, see its README)
and the daemon.
"""
import argparse
import sys

import iommu_broker
from iommu_broker import AccessKind, Client, FaultType, Placement


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="unix:/run/iommud/iommud.sock")
    parser.add_argument("--device", default="nic0")
    args = parser.parse_args()
    print(f"sdk {iommu_broker.__version__}")

    with Client(args.target, device=args.device) as client:
        with client.buffer(64 * 1024, placement=Placement.CONTIGUOUS) as buf:
            phys = buf.runs[0].phys_addr
            print(f"buffer {buf.buffer_id}: {buf.size_bytes} bytes at phys {phys:#x} "
                  f"on device {args.device}")
            with client.map(buf, length_bytes=16 * 1024, direction="to_device") as m:
                dma_addr = m.dma_addr
                print(f"mapped 16384 bytes to_device: dma_addr {dma_addr:#x} "
                      f"in domain {m.domain_id}")
                read = client.translate(dma_addr + 4096, 4096, AccessKind.READ)
                if read.faulted or read.pages[0].phys_addr != phys + 4096:
                    print(f"dma_example: read of dma_addr+0x1000 should reach phys "
                          f"{phys + 4096:#x}: {read}", file=sys.stderr)
                    return 1
                print(f"device read at dma_addr+0x1000: phys {read.pages[0].phys_addr:#x}")
                write = client.translate(dma_addr + 4096, 4096, AccessKind.WRITE)
                if not write.faulted or write.fault_type is not FaultType.PERMISSION:
                    print(f"dma_example: a write to a to_device mapping should fault: {write}",
                          file=sys.stderr)
                    return 1
                print(f"device write at dma_addr+0x1000: fault {write.fault_type.name} "
                      f"(seq {write.fault_seq})")
            print(f"unmapped dma_addr {dma_addr:#x}")
            after = client.translate(dma_addr + 4096, 4096, AccessKind.READ)
            if not after.faulted or after.fault_type is not FaultType.TRANSLATION:
                print(f"dma_example: a read after the unmap should fault: {after}",
                      file=sys.stderr)
                return 1
            print(f"device read after unmap: fault {after.fault_type.name}")
            with client.watch_faults(after_seq=write.fault_seq - 1) as watch:
                record = next(iter(watch)).records[0]
            print(f"fault record {record.seq}: {record.type.name} {record.access.name} "
                  f"at iova {record.iova:#x} by {record.device}")
            buffer_id = buf.buffer_id
        print(f"freed buffer {buffer_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
