# SPDX-License-Identifier: Apache-2.0
"""The SDK's own logic against an in-process fake daemon (no iommud): the
retries and the request ids that make them exactly-once (including a Batch
message written again on a new stream), the metadata each call carries (a
token only over TLS), handle release, the Batch sequence check, the
enum/memory conversions, returned enum fields as enum members, the message
views, and the version."""
import os
import pathlib
import re
import shutil
import tempfile
import threading
import time
import unittest
from concurrent import futures

import grpc

import iommu_broker as ib
from iommu_broker import ops, pb
from iommu_broker._generated.iommu.v1 import (device_pb2_grpc, dma_pb2_grpc, memory_pb2_grpc,
                                              session_pb2_grpc)
from pki import make_pki


REQUEST_ID = re.compile(r"[0-9a-f]{32}")


class Recorder:
    """What the fake saw, how many UNAVAILABLE answers it still owes, and
    how its Batch streams behave; shared by the fake's restarts."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []  # (method, request, metadata dict)
        self.unavailable = 0
        self.streams = []  # the BatchRequests each Batch stream read
        # The first Batch stream answers only its first `answer_first`
        # messages and, having read `end_first_after`, ends with `end_first_with`.
        self.answer_first = 1 << 30
        self.end_first_after = 1 << 30
        self.end_first_with = grpc.StatusCode.UNAVAILABLE
        # The daemon's side of the protocol: each op applied gets the next
        # number; a Batch message whose id was seen is answered from `replies`.
        self.applied_ops = 0
        self.replayed = 0
        self.replies = {}

    def record(self, method, request, context):
        with self.lock:
            self.calls.append((method, request, dict(context.invocation_metadata())))
            if self.unavailable > 0:
                self.unavailable -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "try again")

    def methods(self):
        return [c[0] for c in self.calls]

    def request_ids(self):
        return [md.get("iommu-request-id") for _, _, md in self.calls]

    def apply(self, request, skew):
        """The response to a Batch message: its original one if its id was seen."""
        if request.request_id in self.replies:
            self.replayed += 1
            return self.replies[request.request_id]
        results = []
        for _ in request.ops:
            self.applied_ops += 1
            results.append(pb.BatchResult(code=5, message="dma_addr=0x9: no mapping",
                                          translate=pb.TranslateOpResult(
                                              phys_addr=self.applied_ops, faulted=True,
                                              fault_type=pb.FAULT_TYPE_TRANSLATION)))
        response = pb.BatchResponse(sequence=request.sequence + skew, results=results)
        if request.request_id:
            self.replies[request.request_id] = response
        return response


class FakeDma(dma_pb2_grpc.DmaServicer):
    def __init__(self, rec, skew=0):
        self.rec, self.skew = rec, skew

    def Map(self, request, context):
        self.rec.record("Map", request, context)
        return pb.MapResponse(dma_addr=0x1000 + request.mem.offset_bytes, mapping_id=1)

    def Unmap(self, request, context):
        self.rec.record("Unmap", request, context)
        if request.dma_addr == 0xdead:
            context.abort(grpc.StatusCode.NOT_FOUND, "dma_addr=0xdead: no mapping")
        return pb.UnmapResponse()

    def Sync(self, request, context):
        self.rec.record("Sync", request, context)
        return pb.SyncResponse()

    def Batch(self, request_iterator, context):
        with self.rec.lock:
            stream = len(self.rec.streams)
            self.rec.streams.append([])
        for read, request in enumerate(request_iterator, 1):
            self.rec.record("Batch", request, context)
            with self.rec.lock:
                self.rec.streams[stream].append(request)
                response = self.rec.apply(request, self.skew)
                answer = stream > 0 or read <= self.rec.answer_first
                end = stream == 0 and read == self.rec.end_first_after
            if answer:
                yield response
            if end:
                context.abort(self.rec.end_first_with, "fake: stream ended")


class FakeMemory(memory_pb2_grpc.MemoryServicer):
    def __init__(self, rec):
        self.rec = rec

    def AllocBuffer(self, request, context):
        self.rec.record("AllocBuffer", request, context)
        return pb.AllocBufferResponse(buffer=pb.Buffer(buffer_id=7, device=request.device,
                                                       size_bytes=request.size_bytes,
                                                       placement=request.placement))

    def FreeBuffer(self, request, context):
        self.rec.record("FreeBuffer", request, context)
        return pb.FreeBufferResponse()


class FakeDevices(device_pb2_grpc.DevicesServicer):
    def __init__(self, rec):
        self.rec = rec

    def ListIommus(self, request, context):
        self.rec.record("ListIommus", request, context)
        return pb.ListIommusResponse(smmus=[pb.SmmuConfig(name="smmu0", stage=pb.STAGE_2)])

    def Translate(self, request, context):
        """Faults with the fault type numbered as the access's length (0: no fault)."""
        self.rec.record("Translate", request, context)
        if request.length_bytes >= 8:
            return pb.TranslateResponse()
        return pb.TranslateResponse(faulted=True, fault_type=request.length_bytes,
                                    fault_iova=request.iova)

    def TranslateBatch(self, request, context):
        return pb.TranslateBatchResponse(
            results=[self.Translate(access, context) for access in request.accesses])


class FakeSessions(session_pb2_grpc.SessionsServicer):
    def __init__(self, rec):
        self.rec = rec

    def OpenSession(self, request, context):
        self.rec.record("OpenSession", request, context)
        return pb.OpenSessionResponse(session_id=42, ttl_ms=request.ttl_ms or 30000)

    def KeepAlive(self, request, context):
        self.rec.record("KeepAlive", request, context)
        return pb.KeepAliveResponse()

    def CloseSession(self, request, context):
        self.rec.record("CloseSession", request, context)
        return pb.CloseSessionResponse()


class SdkUnitTest(unittest.TestCase):
    def start(self, skew=0, tls=False):
        """The fake's target; with `tls`, it serves TLS with a throw-away
        certificate for localhost and self.ca is its CA. stop_server() and
        serve() again restart it on the same socket."""
        self.rec = Recorder()
        self.skew = skew
        self.creds = None
        tmp = tempfile.mkdtemp(prefix="iommu-fake-")
        self.socket = f"{tmp}/fake.sock"
        if tls:
            pki_dir = tempfile.mkdtemp(prefix="iommu-fake-pki-")
            self.addCleanup(shutil.rmtree, pki_dir, True)
            pki = make_pki(pki_dir)
            self.ca = pki["ca"][0]
            with open(pki["server"][0], "rb") as cert, open(pki["server"][1], "rb") as key:
                self.creds = grpc.ssl_server_credentials([(key.read(), cert.read())])
        self.addCleanup(os.rmdir, tmp)
        self.addCleanup(lambda: os.path.exists(self.socket) and os.unlink(self.socket))
        self.addCleanup(self.stop_server)
        self.serve()
        return f"unix:{self.socket}"

    def serve(self):
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        dma_pb2_grpc.add_DmaServicer_to_server(FakeDma(self.rec, self.skew), server)
        memory_pb2_grpc.add_MemoryServicer_to_server(FakeMemory(self.rec), server)
        device_pb2_grpc.add_DevicesServicer_to_server(FakeDevices(self.rec), server)
        session_pb2_grpc.add_SessionsServicer_to_server(FakeSessions(self.rec), server)
        target = f"unix:{self.socket}"
        if self.creds is not None:
            server.add_secure_port(target, self.creds)
        else:
            server.add_insecure_port(target)
        server.start()
        self.server = server

    def stop_server(self):
        if self.server is not None:
            self.server.stop(None).wait()
            self.server = None

    def client(self, **kwargs):
        tls = "token" in kwargs
        target = self.start(kwargs.pop("skew", 0), tls=tls)
        if tls:
            kwargs["tls"] = ib.TlsConfig(ca=self.ca)
        c = ib.Client(target, **kwargs)
        self.addCleanup(c.close)
        return c

    def test_every_attempt_of_a_mutating_call_carries_one_request_id(self):
        c = self.client(device="nic0")
        for call, name in ((lambda: c.map(3, length_bytes=8), "Map"),
                           (lambda: c.unmap(0x1000), "Unmap"),
                           (lambda: c.translate(0x1000, 8), "Translate"),
                           (lambda: c.alloc_buffer(4096), "AllocBuffer")):
            with self.subTest(method=name):
                self.rec.calls.clear()
                self.rec.unavailable = 2
                call()
                self.assertEqual(self.rec.methods(), [name] * 3)
                ids = self.rec.request_ids()
                self.assertRegex(ids[0], REQUEST_ID)
                self.assertEqual(ids, [ids[0]] * 3)
                call()
                self.assertNotEqual(self.rec.request_ids()[3], ids[0])  # a fresh id per call

    def test_reads_are_retried_without_a_request_id(self):
        c = self.client(device="nic0")
        self.rec.unavailable = 2
        self.assertEqual([s.name for s in c.list_iommus()], ["smmu0"])
        self.rec.unavailable = 1
        c.sync()
        self.assertEqual(self.rec.methods(), ["ListIommus"] * 3 + ["Sync"] * 2)
        self.assertEqual(self.rec.request_ids(), [None] * 5)

    def test_retries_give_up(self):
        c = self.client(retries=2)
        self.rec.unavailable = 10
        with self.assertRaises(ib.Unavailable) as cm:
            c.map(3, length_bytes=8)
        self.assertEqual(cm.exception.message, "try again")
        self.assertEqual(len(self.rec.calls), 3)

    def test_retries_end_at_the_timeout(self):
        c = self.client(timeout=0.4, retries=1000)
        self.rec.unavailable = 1 << 30
        start = time.monotonic()
        with self.assertRaises(ib.Unavailable):
            c.unmap(0x1000)
        took = time.monotonic() - start
        # Ended by the timeout, not the attempt cap (generous for a loaded machine).
        self.assertLess(took, 3.0)
        self.assertGreater(took, 0.2)
        self.assertGreater(len(self.rec.calls), 3)

    def test_a_retry_waits_for_the_daemon_to_come_back(self):
        c = self.client(device="nic0")
        c.sync()
        self.stop_server()
        restart = threading.Timer(0.7, self.serve)
        restart.start()
        start = time.monotonic()
        m = c.map(3, length_bytes=8)
        took = time.monotonic() - start
        restart.join()
        self.assertEqual(m.dma_addr, 0x1000)
        self.assertLess(took, 8.0)  # well within the timeout (generous for a loaded machine)
        self.assertEqual(self.rec.methods(), ["Sync", "Map"])
        self.assertRegex(self.rec.request_ids()[1], REQUEST_ID)

    def test_a_daemon_that_stays_down_is_unavailable_at_the_timeout(self):
        c = self.client(device="nic0", timeout=0.8)
        c.sync()
        self.stop_server()
        start = time.monotonic()
        with self.assertRaises(ib.Unavailable) as cm:
            c.unmap(0x1000)
        self.assertIn("still unreachable at the deadline", cm.exception.message)
        self.assertGreater(time.monotonic() - start, 0.7)

    def test_only_unavailable_is_retried(self):
        c = self.client(device="nic0")
        with self.assertRaises(ib.NotFound):
            c.unmap(0xdead)
        self.assertEqual(self.rec.methods(), ["Unmap"])

    def test_token_needs_tls_and_no_client_certificate(self):
        for kwargs, field in (({}, "tls=None"),
                              ({"tls": ib.TlsConfig(ca=b"ca", cert=b"c", key=b"k")}, "tls.cert="),
                              ({"tls": ib.TlsConfig(ca=b"ca"), "token": ""}, "token=")):
            with self.subTest(field=field):
                kwargs.setdefault("token", "s3cret-0123456789")
                with self.assertRaises(ib.InvalidArgument) as cm:
                    ib.Client("unix:/nonexistent.sock", **kwargs)
                self.assertTrue(cm.exception.message.startswith(field), cm.exception.message)
                self.assertNotIn("s3cret", cm.exception.message)

    def test_token_device_and_session_travel_with_every_call(self):
        c = self.client(device="nic0", token="s3cret")
        with c.session(ttl_ms=60_000) as s:
            s.client.alloc_buffer(4096).detach()
        c.unmap(0x1000)
        by_method = {m: (req, md) for m, req, md in self.rec.calls}
        for method in ("OpenSession", "AllocBuffer", "CloseSession", "Unmap"):
            req, md = by_method[method]
            self.assertEqual(md["authorization"], "Bearer s3cret", method)
            self.assertEqual(req.device, "nic0", method)
        self.assertEqual(by_method["AllocBuffer"][1]["iommu-session-id"], "42")
        self.assertNotIn("iommu-session-id", by_method["OpenSession"][1])
        self.assertNotIn("iommu-session-id", by_method["Unmap"][1])
        self.assertEqual(by_method["CloseSession"][0].session_id, 42)

    def test_session_keeps_its_lease_alive(self):
        c = self.client(device="nic0")
        with c.session(ttl_ms=90) as s:
            deadline = threading.Event()
            deadline.wait(0.5)
            self.assertIsNone(s.keepalive_error)
        keepalives = self.rec.methods().count("KeepAlive")
        self.assertGreaterEqual(keepalives, 5)  # every ttl/3 = 30 ms for 0.5 s
        self.assertEqual(self.rec.methods()[-1], "CloseSession")

    def test_handles_release_once(self):
        c = self.client(device="nic0")
        with c.buffer(8192) as buf:
            m = c.map(buf, offset_bytes=0x10)
            self.assertEqual(m.dma_addr, 0x1010)
            (_, map_req, _), = [x for x in self.rec.calls if x[0] == "Map"]
            self.assertEqual((map_req.mem.buffer_id, map_req.mem.length_bytes), (7, 8192 - 0x10))
            m.release()
            m.release()
            with m:
                pass
        self.assertEqual(self.rec.methods().count("Unmap"), 1)
        self.assertEqual(self.rec.methods().count("FreeBuffer"), 1)
        self.assertIn("released", repr(m))

    def test_batch_sends_the_device_once_and_checks_results(self):
        c = self.client(device="nic0")
        with c.batch() as batch:
            results = batch.submit([ops.unmap(9), ops.unmap(9, device="nvme0")])
            self.assertEqual([r.code for r in results], [5, 5])
            with self.assertRaises(ib.NotFound) as cm:
                batch.submit([ops.unmap(9)], check=True)
            self.assertEqual(cm.exception.message, "dma_addr=0x9: no mapping")
        first = self.rec.calls[0][1]
        self.assertEqual(first.sequence, 1)
        # The client's device rides on the message; ops keep their own
        # device, empty meaning the message's.
        self.assertEqual(first.device, "nic0")
        self.assertEqual([op.unmap.device for op in first.ops], ["", "nvme0"])

    def test_batch_message_is_written_again_with_its_id_after_a_break(self):
        # The first stream applies both messages, answers the first and
        # breaks with UNAVAILABLE; the second is answered from the record on
        # a new stream, so each op was applied once.
        c = self.client(device="nic0")
        self.rec.answer_first = 1
        self.rec.end_first_after = 2
        with c.batch() as batch:
            first = batch.submit([ops.unmap(9)])
            second = batch.submit([ops.unmap(9), ops.unmap(10)])
            third = batch.submit([ops.unmap(11)])
        self.assertEqual([r.translate.phys_addr for r in first + second + third], [1, 2, 3, 4])
        self.assertEqual(self.rec.applied_ops, 4)
        self.assertEqual(self.rec.replayed, 1)
        (s1_first, s1_second), (s2_second, s2_third) = self.rec.streams
        self.assertEqual(s2_second, s1_second)  # same sequence, id and ops
        self.assertEqual(s2_second.sequence, 2)
        self.assertEqual(s2_third.sequence, 3)
        ids = {m.request_id for m in (s1_first, s1_second, s2_third)}
        self.assertEqual(len(ids), 3)
        for i in ids:
            self.assertRegex(i, REQUEST_ID)

    def test_batch_rides_out_a_daemon_restart(self):
        c = self.client(device="nic0")
        with c.batch() as batch:
            batch.submit([ops.unmap(9)])
            self.stop_server()  # the stream breaks while idle
            threading.Timer(0.3, self.serve).start()
            results = batch.submit([ops.unmap(10)])
        self.assertEqual([r.translate.phys_addr for r in results], [2])
        self.assertEqual(len(self.rec.streams), 2)

    def test_batch_other_errors_are_not_retried(self):
        c = self.client(device="nic0")
        self.rec.answer_first = 0
        self.rec.end_first_after = 1
        self.rec.end_first_with = grpc.StatusCode.PERMISSION_DENIED
        with self.assertRaises(ib.PermissionDenied):
            with c.batch() as batch:
                batch.submit([ops.unmap(9)])
        self.assertEqual(len(self.rec.streams), 1)

    def test_batch_sequence_mismatch_is_an_error(self):
        c = self.client(device="nic0", skew=1)
        with self.assertRaises(ib.Internal):
            with c.batch() as batch:
                batch.submit([ops.unmap(9)])

    def test_conversions(self):
        self.assertEqual(ib.convert.direction("to_device"), pb.DMA_DIRECTION_TO_DEVICE)
        self.assertEqual(ib.convert.sg_mode("CONTIGUOUS"), pb.SG_MODE_CONTIGUOUS)
        self.assertEqual(ib.convert.domain_type("dma_fq"), pb.DOMAIN_TYPE_DMA_FQ)
        self.assertEqual(ib.convert.access(99), 99)  # numbers pass; the daemon checks them
        with self.assertRaises(ValueError):
            ib.convert.placement("everywhere")
        with self.assertRaises(TypeError):
            ib.convert.memref("buffer 7")
        ref = ib.phys(0x8000_0000, 4096)
        self.assertEqual(ref.WhichOneof("memory"), "phys_addr")
        self.assertEqual(ib.convert.attrs({"privileged": True}), pb.DmaAttrs(privileged=True))

    def test_returned_enum_fields_are_enum_members(self):
        c = self.client(device="nic0")
        (smmu,) = c.list_iommus()
        self.assertIs(smmu.stage, ib.Stage.STAGE_2)
        self.assertEqual(smmu.stage.name, "STAGE_2")
        t = c.translate(0x1000, pb.FAULT_TYPE_PERMISSION, "write")
        self.assertTrue(t.faulted)
        self.assertIs(t.fault_type, ib.FaultType.PERMISSION)
        self.assertEqual(t.fault_type.name, "PERMISSION")
        self.assertEqual(t.fault_type, pb.FAULT_TYPE_PERMISSION)  # an int still
        self.assertIs(c.translate(0x1000, 8).fault_type, ib.FaultType.UNSPECIFIED)
        (r,) = c.translate_batch([(0x1000, pb.FAULT_TYPE_ADDRESS_SIZE)])
        self.assertIs(r.fault_type, ib.FaultType.ADDRESS_SIZE)
        with c.buffer(4096, placement="huge") as buf:
            self.assertIs(buf.placement, ib.Placement.HUGE)
            self.assertIs(buf.info.placement, ib.Placement.HUGE)
            (_, request, _), = [x for x in self.rec.calls if x[0] == "AllocBuffer"]
            self.assertEqual(request.placement, pb.PLACEMENT_HUGE)
        with c.batch() as batch:
            (result,) = batch.submit([ops.translate(0x1000, 8)])
        self.assertIs(result.translate.fault_type, ib.FaultType.TRANSLATION)
        self.assertEqual(result.WhichOneof("result"), "translate")

    def test_an_unknown_enum_number_reads_as_an_unrecognized_member(self):
        # A newer daemon's value: a member of the enum still, named by its number.
        c = self.client(device="nic0")
        t = c.translate(0x1000, 7)
        self.assertIsInstance(t.fault_type, ib.FaultType)
        self.assertEqual((t.fault_type.name, t.fault_type.value), ("UNRECOGNIZED_7", 7))
        self.assertEqual(t.fault_type, 7)
        self.assertNotIn(7, [m.value for m in ib.FaultType])

    def test_enums_are_the_protos_without_their_prefix(self):
        proto_enums = {}
        for module in (pb,):
            for name in dir(module):
                value = getattr(module, name)
                if hasattr(value, "DESCRIPTOR") and hasattr(value, "items") \
                        and not isinstance(value, type):
                    proto_enums[name] = value
        self.assertEqual(set(proto_enums), set(ib.enums.__all__))
        self.assertLessEqual(set(ib.enums.__all__), set(ib.__all__))
        for name, wrapper in proto_enums.items():
            enum = getattr(ib, name)
            prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper() + "_"
            expected = [(n[len(prefix):] if name != "Stage" else n, v) for n, v in wrapper.items()]
            self.assertEqual([(m.name, m.value) for m in enum], expected, name)
        self.assertIs(ib.DomainType(pb.DOMAIN_TYPE_DMA_FQ), ib.DomainType.DMA_FQ)
        self.assertEqual(ib.convert.direction(ib.DmaDirection.FROM_DEVICE),
                         pb.DMA_DIRECTION_FROM_DEVICE)
        self.assertEqual(ib.convert.direction("dma_direction_to_device"),
                         pb.DMA_DIRECTION_TO_DEVICE)
        self.assertEqual(ib.convert.enum_value(ib.Stage, "stage_2"), pb.STAGE_2)

    def test_views_read_fields_typed_and_never_write_through(self):
        domain = ib.messages.Domain(pb.Domain(domain_id=3, type=pb.DOMAIN_TYPE_IDENTITY,
                                              devices=["nic0", "nvme0"]))
        self.assertEqual(domain.devices, ("nic0", "nvme0"))
        self.assertIs(domain.type, ib.DomainType.IDENTITY)
        self.assertEqual(domain, ib.messages.Domain(pb.Domain(
            domain_id=3, type=pb.DOMAIN_TYPE_IDENTITY, devices=["nic0", "nvme0"])))
        self.assertNotEqual(domain, ib.messages.Domain(pb.Domain(domain_id=4)))
        copy = domain.to_proto()
        copy.domain_id = 9
        self.assertEqual(domain.domain_id, 3)
        self.assertIn("type=<DomainType.IDENTITY: 4>", repr(domain))
        request = ib.messages.TranslateRequest(pb.TranslateRequest(iova=1))
        self.assertIsNone(request.stream_id)  # proto3 optional, unset
        self.assertEqual(ib.messages.TranslateRequest(pb.TranslateRequest(stream_id=0)).stream_id, 0)
        faults = ib.messages.FaultStats(pb.FaultStats(by_type={"permission": 2}))
        self.assertEqual(faults.by_type, {"permission": 2})

    def test_handles_are_views_of_their_response(self):
        c = self.client(device="nic0")
        with c.buffer(8192) as buf:
            self.assertIsInstance(buf, ib.messages.Buffer)
            self.assertEqual((buf.buffer_id, buf.size_bytes, buf.device), (7, 8192, "nic0"))
            info = buf.info
            self.assertIs(type(info), ib.messages.Buffer)
            self.assertNotEqual(buf, info)  # a handle equals itself only
            self.assertEqual(info, ib.messages.Buffer(pb.Buffer(
                buffer_id=7, device="nic0", size_bytes=8192, placement=pb.PLACEMENT_SCATTERED)))

    def test_version_is_the_projects(self):
        cmakelists = pathlib.Path(__file__).resolve().parents[3] / "CMakeLists.txt"
        version = re.search(r"project\(\s*iommu_broker\s+VERSION\s+([0-9.]+)",
                            cmakelists.read_text()).group(1)
        self.assertEqual(ib.__version__, version)
        self.assertRegex(ib.__version__, r"^\d+\.\d+\.\d+$")


if __name__ == "__main__":
    unittest.main(verbosity=2)
