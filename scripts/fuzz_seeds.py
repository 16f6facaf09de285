#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the seed inputs of the broker operation fuzzer, the request
converters' fuzzer and the request scanner's fuzzer (the topology loader's
seeds are text files written by hand; the state store's come from
store/state_store_test.cc).

  scripts/fuzz_seeds.py            rewrites the seed_* files of
                                   core/broker/fuzz_corpus/broker_ops,
                                   server/fuzz_corpus/proto_convert and
                                   server/fuzz_corpus/request_scan

Each broker seed is a short scenario, encoded decision by decision as
core/broker/broker_ops_fuzz.cc decodes its input (core/testing/fuzz_input.h),
so that the fuzzer starts from states that take many calls to reach: a
mapped buffer translated, an export imported and revoked, a session
released, domains created, attached and destroyed, an UNMANAGED domain with
an MSI window. The converter seeds are request messages encoded by protoc
from text, after the byte that picks their type. Keep the encodings in step
with the decoders: a seed that no longer decodes as meant still runs, but
seeds no deeper state.
"""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- broker_ops -----------------------------------------------------------------

DEVICES = ["nic0", "gpu0", "tbt0", "cam0", "dsp0"]
OPS = {
    "open_session": 0, "keep_alive": 1, "close_session": 2, "tick": 3, "alloc_buffer": 4,
    "free_buffer": 5, "get_buffer": 6, "map": 7, "unmap": 8, "batch": 9, "map_sg": 10,
    "unmap_sg": 11, "alloc": 12, "free": 13, "get_sg_table": 14, "revoke_export": 15,
    "msi_cookie": 16, "map_at": 17, "unmap_range": 18, "sync": 19, "create_domain": 20,
    "destroy_domain": 21, "get_domain": 22, "list_domains": 23, "attach": 24, "detach": 25,
    "list_iommus": 26, "list_devices": 27, "get_stats": 28, "read_faults": 29, "walk": 30,
    "iova_ranges": 31, "translate": 32, "translate_batch": 33, "wait_faults": 34,
}
SELF, ADMIN = 0x12, 0x10  # CallerFor: the device itself / the admin, no session
SELF_IN_SESSION = 0x02  # the device itself under a session (Session() follows)


class Ops:
    """Encodes decisions as Driver reads them."""

    def __init__(self):
        self.out = bytearray()

    def byte(self, v):
        self.out.append(v & 0xFF)
        return self

    def u16(self, v):
        return self.byte(v).byte(v >> 8)

    def op(self, name):
        return self.byte(OPS[name])

    def device(self, name):
        return self.byte(DEVICES.index(name))

    def caller(self, kind=SELF, session_index=None):
        self.byte(kind)
        if session_index is not None:
            self.byte(session_index)
        return self

    def pages(self, n):  # Size(): n pages of 4 KiB
        return self.byte(1).byte(n)

    def pooled(self, index):  # BufferId(), Session(), DomainId(), Token(): the index-th remembered
        return self.byte(index)

    def address(self, index):  # Address(): the index-th DMA address remembered, as is
        return self.byte(0).byte(index).byte(0)

    def mem(self, buffer_index, n_pages):  # Mem(): a buffer from offset 0
        return self.byte(1).pooled(buffer_index).byte(0).pages(n_pages)

    def plain(self):  # Direction() bidirectional, Attrs() none
        return self.byte(0).byte(0x10)

    def alloc_buffer(self, dev, n_pages, placement=1, pool=1, caller=SELF):
        return self.op("alloc_buffer").device(dev).caller(caller).pages(n_pages).byte(
            placement).byte(pool)

    def map(self, dev, buffer_index, n_pages, caller=SELF):
        return self.op("map").device(dev).caller(caller).mem(buffer_index, n_pages).plain()

    def translate(self, dev, addr_index, write=False):
        # length: U16 (Bool 1, then 0x1000); access; not privileged; by device
        return (self.op("translate").device(dev).caller().address(addr_index).byte(1)
                .u16(0x1000).byte(1 if write else 0).byte(0).byte(1))

    def unmap(self, dev, addr_index):
        return self.op("unmap").device(dev).caller().address(addr_index)

    def free_buffer(self, dev, buffer_index):
        return self.op("free_buffer").device(dev).caller().pooled(buffer_index)

    def get_sg_table(self, dev, addr_index, export=None, writable=False):
        self.op("get_sg_table").device(dev).caller().address(addr_index)
        if export is None:
            return self.byte(0)
        self.byte(1).byte(len(export))
        for d in export:
            self.device(d)
        return self.byte(1 if writable else 0)

    def import_token(self, dev, token_index):
        # MapSg with how = 4: an import token alone; mode, direction TO_DEVICE, attrs none
        return (self.op("map_sg").device(dev).caller().byte(4).pooled(token_index).byte(2)
                .byte(1).byte(0x10))

    def read_views(self, dev):
        for name in ("list_domains", "list_devices", "get_stats"):
            self.op(name).device(dev).caller()
        return self


def broker_seeds():
    seeds = {}
    s = Ops()
    s.alloc_buffer("nic0", 4).map("nic0", 0, 4).translate("nic0", 0).translate("nic0", 0, True)
    s.unmap("nic0", 0).free_buffer("nic0", 0).read_views("nic0")
    seeds["seed_map_translate_unmap"] = s

    s = Ops()
    s.alloc_buffer("nic0", 2).map("nic0", 0, 2).get_sg_table("nic0", 0, ["gpu0"])
    s.import_token("gpu0", 0).translate("gpu0", 1)
    s.op("revoke_export").device("nic0").caller().pooled(0)
    s.translate("gpu0", 1).unmap("nic0", 0).free_buffer("nic0", 0)
    seeds["seed_export_import_revoke"] = s

    s = Ops()
    s.op("open_session").device("gpu0").caller().byte(1).byte(30)
    s.op("alloc_buffer").device("gpu0").caller(SELF_IN_SESSION, 0).pages(8).byte(0).byte(3)
    s.op("map").device("gpu0").caller(SELF_IN_SESSION, 0).mem(0, 8).plain()
    s.op("keep_alive").device("gpu0").caller().pooled(0)
    s.op("tick").byte(0).u16(60)  # the lease runs out: everything released
    s.translate("gpu0", 0).read_views("gpu0")
    seeds["seed_session_expiry"] = s

    s = Ops()
    # An UNMANAGED domain on smmu0 owned by nic0, attached, an MSI window, MapAt, UnmapRange.
    s.op("create_domain").device("nic0").caller().byte(1).byte(2).byte(3).byte(0).byte(0)
    s.op("attach").device("nic0").caller().pooled(5)
    s.op("msi_cookie").device("nic0").caller().byte(1).pooled(5).byte(3).u16(0x100).pages(16)
    s.alloc_buffer("nic0", 4).op("map_at").device("nic0").caller().byte(3).u16(0x200)
    s.mem(0, 4).plain()
    s.op("msi_cookie").device("nic0").caller().byte(0)
    s.op("walk").device("nic0").caller().pooled(5).byte(1).byte(255)
    s.op("unmap_range").device("nic0").caller().byte(3).u16(0x200).pages(4)
    s.op("detach").device("nic0").caller().op("destroy_domain").device("nic0").caller().pooled(5)
    seeds["seed_unmanaged_msi_window"] = s

    s = Ops()
    # Alloc in a DMA_FQ domain of gpu0: lazy unmaps, stale translations, Sync.
    s.op("create_domain").device("gpu0").caller().byte(1).byte(1).byte(3).byte(0).byte(0)
    s.op("attach").device("gpu0").caller().pooled(5)
    s.op("alloc").device("gpu0").caller().pages(4).plain().byte(1)
    s.translate("gpu0", 0).op("free").device("gpu0").caller().address(0)
    s.translate("gpu0", 0).op("sync").device("gpu0").caller().translate("gpu0", 0)
    seeds["seed_lazy_alloc_free_sync"] = s

    s = Ops()
    # A scatterlist of two buffers' pages on the untrusted device, its table, a batch.
    s.alloc_buffer("tbt0", 3, placement=0).alloc_buffer("tbt0", 2, placement=1)
    s.op("map_sg").device("tbt0").caller().byte(2).mem(0, 1).mem(1, 2).mem(0, 2).byte(1).plain()
    s.get_sg_table("tbt0", 0).op("unmap_sg").device("tbt0").caller().address(0)
    s.op("batch").device("tbt0").caller().byte(3)
    s.byte(1).mem(1, 1).plain().byte(0).address(1).byte(1).mem(0, 1).plain().byte(0).address(2)
    s.op("iova_ranges").device("tbt0").caller()
    seeds["seed_map_sg_batch"] = s

    s = Ops()
    # cam0 (no scatter-gather, 32-bit SMMU): contexts run out, the admin steps in.
    for _ in range(4):
        s.op("create_domain").device("cam0").caller().byte(0).byte(0).byte(0).byte(3).byte(1)
        s.byte(0)
    s.op("create_domain").device("cam0").caller(ADMIN).byte(0).byte(0).byte(3).byte(3).byte(0)
    s.byte(0)
    s.op("read_faults").device("cam0").caller(ADMIN).byte(1).byte(16)
    s.op("translate").device("cam0").caller(ADMIN).byte(3).u16(1).byte(1).u16(16).byte(0)
    s.byte(0).byte(0).byte(1).byte(1)
    s.op("wait_faults").byte(1)
    seeds["seed_contexts_and_faults"] = s
    return {name: bytes(ops.out) for name, ops in seeds.items()}


# --- proto_convert --------------------------------------------------------------

CONVERT_KINDS = ["MapRequest", "UnmapRequest", "MapAtRequest", "MapSgRequest", "AllocRequest",
                 "MsiCookieRequest", "CreateDomainRequest", "TranslateRequest", "BatchRequest",
                 "AllocBufferRequest"]
CONVERT_SEEDS = {
    "seed_map": ("MapRequest",
                 'device: "nic0" mem { buffer_id: 1 length_bytes: 4096 } '
                 "direction: DMA_DIRECTION_TO_DEVICE attrs { privileged: true }"),
    "seed_map_raw": ("MapRequest",
                     "mem { phys_addr: 0x80000000 length_bytes: 8192 } "
                     "direction: DMA_DIRECTION_BIDIRECTIONAL"),
    "seed_map_no_memory": ("MapRequest", "direction: DMA_DIRECTION_UNSPECIFIED"),
    "seed_unmap": ("UnmapRequest", "dma_addr: 0xfffff000"),
    "seed_map_at": ("MapAtRequest",
                    "iova: 0x100000 mem { buffer_id: 2 offset_bytes: 4096 length_bytes: 4096 } "
                    "direction: DMA_DIRECTION_FROM_DEVICE"),
    "seed_map_sg": ("MapSgRequest",
                    "segments { buffer_id: 1 length_bytes: 512 } "
                    "segments { buffer_id: 2 offset_bytes: 4096 length_bytes: 8192 } "
                    "mode: SG_MODE_MERGE direction: DMA_DIRECTION_BIDIRECTIONAL"),
    "seed_map_sg_import": ("MapSgRequest",
                           'import_token: "iexp_00000000000000000000000000000000" '
                           "mode: SG_MODE_CONTIGUOUS direction: DMA_DIRECTION_TO_DEVICE"),
    "seed_alloc": ("AllocRequest",
                   'size_bytes: 65536 pool: "sram" direction: DMA_DIRECTION_BIDIRECTIONAL '
                   "attrs { force_contiguous: true }"),
    "seed_msi_cookie": ("MsiCookieRequest",
                        "domain_id: 9 window_base: 0x8000000 window_size_bytes: 0x10000"),
    "seed_create_domain": ("CreateDomainRequest",
                           'smmu: "smmu0" type: DOMAIN_TYPE_UNMANAGED granule_bytes: 16384 '
                           'granted_devices: "gpu0" granted_devices: "nvme0"'),
    "seed_translate": ("TranslateRequest",
                       'smmu: "smmu0" stream_id: 256 iova: 0x1000 length_bytes: 8192 '
                       "access: ACCESS_KIND_WRITE privileged: true"),
    "seed_batch": ("BatchRequest",
                   'sequence: 7 device: "nic0" request_id: "r1" '
                   "ops { map { mem { buffer_id: 1 length_bytes: 4096 } "
                   "direction: DMA_DIRECTION_TO_DEVICE } } "
                   "ops { unmap { dma_addr: 0xfffff000 } } "
                   "ops { map_sg { segments { buffer_id: 2 length_bytes: 4096 } "
                   "mode: SG_MODE_DMA_API direction: DMA_DIRECTION_BIDIRECTIONAL } } "
                   "ops { unmap_sg { dma_addr: 0xffffe000 } } "
                   "ops { translate { iova: 0xfffff000 length_bytes: 1 "
                   "access: ACCESS_KIND_READ } }"),
    "seed_alloc_buffer": ("AllocBufferRequest",
                          'device: "nic0" size_bytes: 2097152 placement: PLACEMENT_HUGE '
                          'pool: "dram"'),
}


PROTO_DIR = os.path.join(ROOT, "proto")
PROTO_FILES = ["iommu/v1/common.proto", "iommu/v1/device.proto", "iommu/v1/dma.proto",
               "iommu/v1/domain.proto", "iommu/v1/memory.proto", "iommu/v1/session.proto",
               "iommu/v1/stats.proto"]


def encode(message, text):
    return subprocess.run(
        ["protoc", "-I", PROTO_DIR, "--encode=iommu.v1." + message] + PROTO_FILES,
        input=text.encode(), stdout=subprocess.PIPE, check=True).stdout


def convert_seeds():
    out = {}
    for name, (message, text) in CONVERT_SEEDS.items():
        out[name] = bytes([CONVERT_KINDS.index(message)]) + encode(message, text)
    return out

# --- request_scan ---------------------------------------------------------------


def request_types():
    """The input types of every iommu.v1 method, ordered by full name: the
    request_scan fuzzer's first byte indexes this list (RequestTypes())."""
    types = set()
    for f in PROTO_FILES:
        with open(os.path.join(PROTO_DIR, f)) as proto:
            for m in re.finditer(r"\brpc\s+\w+\s*\(\s*(?:stream\s+)?([\w.]+)\s*\)",
                                 proto.read()):
                types.add("iommu.v1." + m.group(1).split(".")[-1])
    return sorted(types)


def scan_seeds():
    """Each converter seed, a request with every counted list and string at
    its limit (request_scan_fuzz.cc's SmallLimits) and one just past it, and
    a Batch operation whose MapSg comes twice (the parser merges the two)."""
    types = request_types()

    def seed(message, data):
        return bytes([types.index("iommu.v1." + message)]) + data

    out = {}
    for name, (message, text) in CONVERT_SEEDS.items():
        out["seed_" + name[len("seed_"):]] = seed(message, encode(message, text))
    segment = "segments { buffer_id: 1 length_bytes: 4096 } "
    out["seed_sg_at_limit"] = seed("MapSgRequest", encode("MapSgRequest", segment * 3))
    out["seed_sg_past_limit"] = seed("MapSgRequest", encode("MapSgRequest", segment * 4))
    access = 'accesses { device: "nic0" iova: 0x1000 length_bytes: 1 } '
    out["seed_translate_batch"] = seed("TranslateBatchRequest",
                                       encode("TranslateBatchRequest",
                                              access * 3))
    out["seed_export_importers"] = seed(
        "GetSgTableRequest",
        encode("GetSgTableRequest", 'export_importers: "gpu0" export_importers: "nic0"'))
    out["seed_long_string"] = seed("AllocBufferRequest",
                                   encode("AllocBufferRequest", 'device: "abcdefghi"'))
    op = encode("BatchOp", "map_sg { " + segment * 2 + "}")
    twice = op + op
    out["seed_batch_map_sg_twice"] = seed(
        "BatchRequest",
        encode("BatchRequest", 'device: "nic0" ops { unmap { dma_addr: 0x1000 } }')
        + bytes([0x12, len(twice)]) + twice)
    return out


def write(directory, seeds):
    path = os.path.join(ROOT, directory)
    os.makedirs(path, exist_ok=True)
    for f in os.listdir(path):
        if f.startswith("seed_"):
            os.remove(os.path.join(path, f))
    for name, data in seeds.items():
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    print(f"{directory}: {len(seeds)} seeds")


def main():
    write("core/broker/fuzz_corpus/broker_ops", broker_seeds())
    write("server/fuzz_corpus/proto_convert", convert_seeds())
    write("server/fuzz_corpus/request_scan", scan_seeds())
    return 0


if __name__ == "__main__":
    sys.exit(main())
