#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A real Prometheus server scrapes the real iommud.

Starts iommud (Unix socket, metrics on a free port) and Debian's prometheus
(loopback only, scrape interval 1s, temp storage); checks `promtool check
metrics` on /metrics; through Prometheus' HTTP API, that every metric family
of docs/design.md#metrics is present; then drives a workload over gRPC (Debian's
python3-grpcio, messages from protoc --python_out generated at test time) and
checks that counters moved. Every wait is bounded. Exit 0 on success.
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

FAMILIES = [
    # gRPC (go-grpc-prometheus)
    "grpc_server_started_total", "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket", "grpc_server_msg_received_total",
    "grpc_server_msg_sent_total",
    # broker
    "iommu_iova_space_bytes", "iommu_iova_allocated_bytes", "iommu_iova_free_bytes",
    "iommu_iova_largest_free_bytes", "iommu_iova_free_ranges", "iommu_iova_fragmentation_ratio",
    "iommu_iova_alloc_failures_total", "iommu_iova_cache_hits_total",
    "iommu_iova_cache_misses_total", "iommu_iotlb_hits_total", "iommu_iotlb_misses_total",
    "iommu_iotlb_evictions_total", "iommu_iotlb_invalidations_total", "iommu_iotlb_entries",
    "iommu_iotlb_stale_hits_total", "iommu_pagetable_pages", "iommu_mappings",
    "iommu_mapped_bytes", "iommu_translations_total", "iommu_faults_total",
    "iommu_fault_records_dropped_total", "iommu_build_info",
    # histograms, pools and process metrics
    "iommu_iova_free_range_size_bytes_bucket", "iommu_pool_free_bytes",
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
    "process_start_time_seconds",
    # the state store
    "iommu_store_commit_duration_seconds_bucket", "iommu_store_commits_total",
    "iommu_store_writes_total", "iommu_store_size_bytes", "iommu_store_recovery_duration_seconds",
    "iommu_store_recovered_records", "iommu_store_recovered_mappings",
    "iommu_store_recovery_repairs",
]

# Counters that a Map/Translate/Unmap workload must move.
MOVING = [
    'sum(grpc_server_handled_total{grpc_method="Map",grpc_code="OK"})',
    'sum(grpc_server_started_total{grpc_service="iommu.v1.Devices"})',
    'sum(grpc_server_msg_received_total)',
    'sum(grpc_server_handling_seconds_count{grpc_method="Translate"})',
    'sum(iommu_iotlb_hits_total)', 'sum(iommu_iotlb_misses_total)',
    'sum(iommu_translations_total{result="ok"})', 'sum(iommu_translations_total{result="fault"})',
    'sum(iommu_faults_total{type="translation"})',
    'sum(iommu_faults_total{device="nic0", type="translation"})',
    'sum(iommu_iotlb_invalidations_total)',
    'sum(grpc_server_handled_total{grpc_code="NotFound"})',
    'sum(iommu_store_commits_total)', 'sum(iommu_store_commit_duration_seconds_count)',
]

DEADLINE_S = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def wait_for(what, fn, timeout_s=30):
    end = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


class Prom:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}/api/v1/"

    def query(self, q):
        body = json.loads(http_get(self.base + "query?" + urllib.parse.urlencode({"query": q})))
        assert body["status"] == "success", body
        return body["data"]["result"]

    def scalar(self, q):
        r = self.query(q)
        return float(r[0]["value"][1]) if r else None

    def names(self):
        return set(json.loads(http_get(self.base + "label/__name__/values"))["data"])


def workload(source_dir, grpc_target, tmp):
    """Map, translate (hits, misses, faults), unmap, and a failing call."""
    out = os.path.join(tmp, "py")
    os.makedirs(out)
    protos = [os.path.join("iommu/v1", p) for p in sorted(os.listdir(os.path.join(source_dir, "proto/iommu/v1")))]
    subprocess.run(["protoc", "-I", os.path.join(source_dir, "proto"), "--python_out", out, *protos],
                   check=True)
    sys.path.insert(0, out)
    import grpc  # Debian's python3-grpcio
    from iommu.v1 import common_pb2, device_pb2, dma_pb2, memory_pb2

    ch = grpc.insecure_channel(grpc_target)

    def call(service, method, request, response_type):
        fn = ch.unary_unary(f"/iommu.v1.{service}/{method}",
                            request_serializer=lambda m: m.SerializeToString(),
                            response_deserializer=response_type.FromString)
        return fn(request, timeout=10)

    buf = call("Memory", "AllocBuffer",
               memory_pb2.AllocBufferRequest(device="nic0", size_bytes=1 << 20,
                                             placement=common_pb2.PLACEMENT_SCATTERED),
               memory_pb2.AllocBufferResponse).buffer
    for i in range(50):
        m = call("Dma", "Map", dma_pb2.MapRequest(
            device="nic0", direction=common_pb2.DMA_DIRECTION_BIDIRECTIONAL,
            mem=common_pb2.MemRef(buffer_id=buf.buffer_id, offset_bytes=(i % 256) * 4096,
                                  length_bytes=4096)), dma_pb2.MapResponse)
        for _ in range(2):  # a miss, then a hit
            call("Devices", "Translate", device_pb2.TranslateRequest(
                device="nic0", iova=m.dma_addr, length_bytes=64, access=common_pb2.ACCESS_KIND_READ),
                device_pb2.TranslateResponse)
        call("Dma", "Unmap", dma_pb2.UnmapRequest(device="nic0", dma_addr=m.dma_addr),
             dma_pb2.UnmapResponse)
    t = call("Devices", "Translate", device_pb2.TranslateRequest(
        device="nic0", iova=0x10000, length_bytes=4, access=common_pb2.ACCESS_KIND_READ),
        device_pb2.TranslateResponse)
    assert t.faulted, t
    # Server reflection (v1alpha) lists every service: ServerReflectionRequest
    # {list_services: ""} is field 7, encoded by hand (no reflection stubs).
    reflect = ch.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
    listed = b"".join(reflect(iter([b"\x3a\x00"]), timeout=10))
    for service in [b"iommu.v1.Dma", b"iommu.v1.Memory", b"iommu.v1.Domains", b"iommu.v1.Devices",
                    b"iommu.v1.Sessions", b"iommu.v1.Stats", b"grpc.health.v1.Health"]:
        assert service in listed, (service, listed)
    print("reflection lists every service")
    try:
        call("Dma", "Unmap", dma_pb2.UnmapRequest(device="nic0", dma_addr=0x10000),
             dma_pb2.UnmapResponse)
        raise AssertionError("unmap of nothing succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iommud", required=True)
    ap.add_argument("--prometheus", default="/usr/bin/prometheus")
    ap.add_argument("--promtool", default="/usr/bin/promtool")
    ap.add_argument("--source_dir", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="iommud_prom.")
    procs = []
    try:
        sock = os.path.join(tmp, "iommud.sock")
        log = open(os.path.join(tmp, "iommud.log"), "w+")
        iommud = subprocess.Popen([args.iommud, f"--listen=unix:{sock}",
                                   "--metrics_listen=127.0.0.1:0",
                                   "--state_dir=" + os.path.join(tmp, "state")],
                                  stdout=log, stderr=log)
        procs.append(iommud)

        def serving():
            log.seek(0)
            return re.search(r"metrics=http://(\S+)/metrics", log.read())
        metrics_addr = wait_for("iommud to serve", serving).group(1)
        print("iommud metrics at", metrics_addr)

        # promtool check metrics on the exposition.
        body = http_get(f"http://{metrics_addr}/metrics")
        lint = subprocess.run([args.promtool, "check", "metrics"], input=body, text=True,
                              capture_output=True)
        assert lint.returncode == 0, "promtool check metrics:\n" + lint.stdout + lint.stderr
        print("promtool check metrics: OK")

        # Every gRPC series exists from start-up, for every method.
        for m in ["Map", "Batch", "WatchFaults", "GetStats"]:
            assert f'grpc_method="{m}"' in body, m
        assert re.search(r'grpc_server_handled_total\{grpc_code="OK",grpc_method="Map"', body), \
            "handled_total{code=OK} not pre-created"

        prom_port = free_port()
        config = os.path.join(tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: iommud\n    static_configs:\n"
                    f"      - targets: ['{metrics_addr}']\n")
        prom_log = open(os.path.join(tmp, "prometheus.log"), "w")
        prom = subprocess.Popen([args.prometheus, f"--config.file={config}",
                                 f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=prom_log, stderr=prom_log)
        procs.append(prom)
        p = Prom(prom_port)
        wait_for("prometheus to scrape iommud", lambda: p.scalar('up{job="iommud"}') == 1.0)
        print("prometheus scrapes iommud")

        names = wait_for("every family", lambda: (lambda n: n if all(f in n for f in FAMILIES) else None)(p.names()))
        missing = [f for f in FAMILIES if f not in names]
        assert not missing, missing
        print(f"all {len(FAMILIES)} families present")

        before = {q: (p.scalar(q) or 0.0) for q in MOVING}
        workload(args.source_dir, f"unix:{sock}", tmp)
        time.sleep(2.5)  # two scrapes

        def moved():
            after = {q: (p.scalar(q) or 0.0) for q in MOVING}
            still = [q for q in MOVING if not after[q] > before[q]]
            return after if not still else None
        after = wait_for("counters to move", moved, timeout_s=15)
        for q in MOVING:
            print(f"  {q}: {before[q]:g} -> {after[q]:g}")
        print("PASS")
        return 0
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if iommud.returncode not in (0, None):
            print("iommud exit code", iommud.returncode, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
