# SPDX-License-Identifier: Apache-2.0
"""The Python SDK against the real iommud (--auth=none; token and mTLS in
auth_test.py): every RPC, handles releasing what they hold, sessions, the
streams, and errors mapped to the right exception with the daemon's message.

Run through ctest (python_client_test), or:
  IOMMUD=build/server/iommud PYTHONPATH=build/client/python python3 client_test.py
"""
import signal
import subprocess
import sys
import textwrap
import threading
import time
import unittest

import grpc

import iommu_broker as ib
from iommu_broker import ops, pb
from iommud_harness import DaemonTestCase, Iommud, have_iommud, run_tests

PAGE = 4096


class SdkTestCase(DaemonTestCase):
    def setUp(self):
        self.admin = ib.Client(self.daemon.unix_target)
        self.nic = self.admin.as_device("nic0")
        self.nvme = ib.Client(self.daemon.tcp_target, device="nvme0")
        self.addCleanup(self.admin.close)
        self.addCleanup(self.nvme.close)

    def device_info(self, client):
        (info,) = [d for d in self.admin.list_devices() if d.config.name == client.device]
        return info


class TopologyTest(SdkTestCase):
    def test_list_iommus(self):
        smmus = {s.name: s for s in self.nic.list_iommus()}
        self.assertLessEqual({"smmu0", "smmu1", "smmu2"}, set(smmus))
        self.assertEqual(smmus["smmu0"].ias_bits, 48)
        self.assertIn(4096, smmus["smmu1"].granules_bytes)
        self.assertIn(smmus["smmu0"].stage, (ib.Stage.STAGE_1, ib.Stage.STAGE_2))
        self.assertIsInstance(smmus["smmu0"].stage, ib.Stage)

    def test_list_devices_admin_sees_all_device_sees_itself(self):
        names = {d.config.name for d in self.admin.list_devices()}
        self.assertLessEqual({"nic0", "nvme0", "cam0", "tbt0"}, names)
        mine = self.nic.list_devices()
        self.assertEqual([d.config.name for d in mine], ["nic0"])
        self.assertEqual(mine[0].current_domain_id, mine[0].default_domain_id)

    def test_both_transports_reach_the_same_daemon(self):
        over_tcp = ib.Client(self.daemon.tcp_target)
        self.addCleanup(over_tcp.close)
        self.assertEqual([s.name for s in over_tcp.list_iommus()],
                         [s.name for s in self.admin.list_iommus()])


class BufferAndMapTest(SdkTestCase):
    def test_context_managers_release_the_buffer_and_mapping(self):
        before = self.device_info(self.nic)
        with self.nic.buffer(4 * PAGE) as buf, self.nic.map(buf, direction="to_device") as m:
            self.assertEqual(buf.size_bytes, 4 * PAGE)
            self.assertEqual(self.nic.get_buffer(buf.buffer_id).map_count, 1)
            self.assertEqual(m.iova_size_bytes, 4 * PAGE)
            during = self.device_info(self.nic)
            self.assertEqual(during.mappings, before.mappings + 1)
            self.assertEqual(during.buffers, before.buffers + 1)
            t = self.nic.translate(m.dma_addr, PAGE, "read")
            self.assertFalse(t.faulted)
            self.assertEqual(t.pages[0].phys_addr, buf.runs[0].phys_addr)
            # TO_DEVICE is read-only for the device.
            w = self.nic.translate(m.dma_addr, PAGE, "write")
            self.assertTrue(w.faulted)
            self.assertIs(w.fault_type, ib.FaultType.PERMISSION)
            self.assertEqual(w.fault_type, pb.FAULT_TYPE_PERMISSION)  # still the proto's number
            dma_addr, buffer_id = m.dma_addr, buf.buffer_id
        self.assertTrue(m.released and buf.released)
        after = self.device_info(self.nic)
        self.assertEqual((after.mappings, after.buffers), (before.mappings, before.buffers))
        with self.assertRaises(ib.NotFound):
            self.nic.get_buffer(buffer_id)
        self.assertTrue(self.nic.translate(dma_addr, PAGE).faulted)
        with self.assertRaises(ib.NotFound):
            self.nic.unmap(dma_addr)

    def test_release_is_explicit_and_idempotent_and_detach_keeps(self):
        buf = self.nic.alloc_buffer(PAGE, placement="contiguous")
        self.assertIs(buf.placement, ib.Placement.CONTIGUOUS)
        self.assertIs(self.nic.get_buffer(buf.buffer_id).placement, ib.Placement.CONTIGUOUS)
        m = self.nic.map(buf, offset_bytes=0x10, length_bytes=0x20)
        self.assertEqual(m.dma_addr % PAGE, 0x10)
        m.release()
        m.release()
        kept = buf.detach()
        with buf:
            pass  # detached: leaving the block does not free it
        self.assertEqual(self.nic.get_buffer(kept.buffer_id).map_count, 0)
        self.nic.free_buffer(kept.buffer_id)

    def test_exit_on_exception_releases_and_keeps_the_error(self):
        with self.assertRaises(KeyError):
            with self.nic.buffer(PAGE) as buf:
                buffer_id = buf.buffer_id
                raise KeyError("boom")
        with self.assertRaises(ib.NotFound):
            self.nic.get_buffer(buffer_id)

    def test_freeing_a_mapped_buffer_fails_and_changes_nothing(self):
        with self.nic.buffer(PAGE) as buf, self.nic.map(buf):
            with self.assertRaises(ib.FailedPrecondition) as cm:
                self.nic.free_buffer(buf.buffer_id)
            self.assertIn(f"buffer_id={buf.buffer_id:#x}", cm.exception.message)
            self.assertEqual(self.nic.get_buffer(buf.buffer_id).map_count, 1)


class DmaApiTest(SdkTestCase):
    def test_map_sg_merge_and_contiguous(self):
        # Each scatterlist entry is physically contiguous.
        with self.nic.buffer(2 * PAGE, placement="contiguous") as a, \
                self.nic.buffer(3 * PAGE, placement="contiguous") as b:
            with self.nic.map_sg([a, b], mode="merge", direction="from_device") as sg:
                self.assertGreaterEqual(sg.segment_count, 1)
                self.assertEqual(sum(s.length_bytes for s in sg.segments), 5 * PAGE)
                self.assertEqual(sg.iova_size_bytes % PAGE, 0)
                self.assertEqual(self.nic.get_buffer(a.buffer_id).map_count, 1)
            self.assertEqual(self.nic.get_buffer(a.buffer_id).map_count, 0)
            with self.nic.map_sg([a, b], mode="contiguous") as sg:
                self.assertEqual(sg.segment_count, 1)
                self.assertEqual([(s.dma_addr, s.length_bytes) for s in sg.segments],
                                 [(sg.iova, 5 * PAGE)])

    def test_contiguous_map_sg_failure_names_the_segment(self):
        with self.nic.buffer(PAGE) as a, self.nic.buffer(PAGE) as b:
            with self.assertRaises(ib.FailedPrecondition) as cm:
                self.nic.map_sg([ib.pb.MemRef(buffer_id=a.buffer_id, length_bytes=100), b],
                                mode="contiguous")
            self.assertIn("=", cm.exception.message)
            self.assertEqual(self.nic.get_buffer(a.buffer_id).map_count, 0)

    def test_alloc_get_sg_table_export_and_import(self):
        with self.nic.alloc(64 * 1024, attrs={"force_contiguous": True}) as a:
            self.assertEqual(a.size_bytes, 64 * 1024)
            self.assertEqual(len(a.runs), 1)
            self.assertTrue(a.page_sizes_bytes)
            table = self.nic.get_sg_table(a.dma_addr, export=True, export_writable=True)
            self.assertEqual(table.size_bytes, 64 * 1024)
            self.assertEqual([(c.phys_addr, c.size_bytes) for c in table.chunks],
                             [(r.phys_addr, r.size_bytes) for r in a.runs])
            self.assertTrue(table.export_token)
            with self.nvme.map_sg(import_token=table.export_token) as imported:
                self.assertEqual(imported.segment_count, 1)
                t = self.nvme.translate(imported.iova, PAGE)
                self.assertFalse(t.faulted)
                self.assertEqual(t.pages[0].phys_addr, a.runs[0].phys_addr)
            # The allocation's pages are a buffer the device owns: it can map them again.
            with self.nic.map(a, length_bytes=PAGE) as again:
                self.assertNotEqual(again.dma_addr, a.dma_addr)
        with self.assertRaises(ib.NotFound):
            self.nic.free(a.dma_addr)

    def test_scoped_read_only_export_and_revocation(self):
        gpu = self.admin.as_device("gpu0")
        with gpu.alloc(64 * 1024) as a:
            table = gpu.get_sg_table(a.dma_addr, export=True, export_to=["nvme0"])
            self.assertRegex(table.export_token, r"^iexp_[0-9a-f]{32}$")
            # Not for nic0: the answer of a token never made.
            with self.assertRaises(ib.NotFound):
                self.nic.map_sg(import_token=table.export_token, direction="to_device")
            # Read-only: nvme0 maps it for device reads only.
            with self.assertRaises(ib.PermissionDenied):
                self.nvme.map_sg(import_token=table.export_token)
            imported = self.nvme.map_sg(import_token=table.export_token, direction="to_device")
            self.assertTrue(self.nvme.translate(imported.iova, PAGE, access="write").faulted)
            with self.assertRaises(ib.NotFound):  # only the exporter revokes
                self.nvme.revoke_export(table.export_token)
            self.assertEqual(gpu.revoke_export(table.export_token), 1)
            self.assertTrue(self.nvme.translate(imported.iova, PAGE).faulted)
            # The revocation unmapped it: nothing is left to release.
            with self.assertRaises(ib.NotFound):
                imported.release()
            imported.detach()

    def test_msi_cookie_is_idempotent(self):
        first = self.nic.msi_cookie()
        self.assertNotEqual(first.msi_addr, 0)
        self.assertEqual(first.msi_addr & 0xFFF, 0x040)
        second = self.nic.msi_cookie()
        self.assertEqual(second.msi_addr, first.msi_addr)
        self.assertFalse(second.newly_mapped)
        self.assertFalse(self.nic.translate(first.msi_addr, 4, "write").faulted)

    def test_sync(self):
        self.nic.sync()
        self.nvme.sync()

    def test_translate_batch(self):
        with self.nic.buffer(2 * PAGE) as buf, self.nic.map(buf) as m:
            results = self.nic.translate_batch([(m.dma_addr, 2 * PAGE),
                                                (m.dma_addr + PAGE, 8, "write"),
                                                (0x1000, 8, "read", False)])
            self.assertEqual(len(results), 3)
            self.assertEqual([p.phys_addr for p in results[0].pages],
                             [buf.runs[0].phys_addr + i * PAGE for i in range(2)]
                             if len(buf.runs) == 1 else [p.phys_addr for p in results[0].pages])
            self.assertFalse(results[1].faulted)
            self.assertTrue(results[2].faulted)
            self.assertIs(results[2].fault_type, ib.FaultType.TRANSLATION)

    def test_raw_stream_translate_is_admin_only(self):
        r = self.admin.translate(0x1000, 8, smmu="smmu0", stream_id=0x100)
        self.assertTrue(r.faulted)
        r = self.admin.translate(0x1000, 8, smmu="smmu0", stream_id=0x7777)
        self.assertIs(r.fault_type, ib.FaultType.UNKNOWN_STREAM)
        with self.assertRaises(ib.PermissionDenied):
            self.nic.translate(0x1000, 8, smmu="smmu0", stream_id=0x100)


class DomainTest(SdkTestCase):
    def test_unmanaged_domain_lifecycle(self):
        nic_info = self.device_info(self.nic)
        with self.nic.create_domain("smmu0", "unmanaged") as dom:
            self.assertIs(dom.type, ib.DomainType.UNMANAGED)
            self.assertEqual(dom.type.name, "UNMANAGED")
            self.assertIs(self.nic.get_domain(dom.domain_id).type, ib.DomainType.UNMANAGED)
            self.assertEqual(dom.owner, "nic0")
            self.assertIn(dom.domain_id, [d.domain_id for d in self.nic.list_domains()])
            self.nic.attach_device(dom.domain_id)
            try:
                self.assertEqual(self.device_info(self.nic).current_domain_id, dom.domain_id)
                with self.assertRaises(ib.FailedPrecondition):
                    self.nic.destroy_domain(dom.domain_id)
                cookie = self.nic.msi_cookie(domain_id=dom.domain_id, window_base=0x800_0000,
                                             window_size_bytes=0x10_0000)
                # nic0 is attached and has a doorbell: it is mapped inside the window.
                self.assertGreaterEqual(cookie.msi_addr, 0x800_0000)
                self.assertLess(cookie.msi_addr, 0x810_0000)
                ranges = self.nic.get_iova_ranges()
                self.assertEqual(ranges.domain_id, dom.domain_id)
                msi = [r for r in ranges.reserved if (r.start, r.end) == (0x800_0000, 0x80F_FFFF)]
                self.assertEqual(len(msi), 1, ranges)
                self.assertIs(msi[0].kind, ib.ReservedKind.MSI)
                with self.nic.buffer(2 * PAGE, placement="contiguous") as buf:
                    mappings = self.nic.get_domain(dom.domain_id).mappings  # the MSI doorbell
                    with self.nic.map_at(0x4000_0000, buf) as rm:
                        self.assertEqual(self.nic.get_domain(dom.domain_id).mappings, mappings + 1)
                        with self.assertRaises(ib.AlreadyExists) as cm:
                            self.nic.map_at(0x4000_1000, buf, length_bytes=PAGE)
                        self.assertIn("iova=0x40001000", cm.exception.message)
                        with self.assertRaises(ib.FailedPrecondition):  # would split it
                            self.nic.unmap_range(0x4000_0000, PAGE)
                        t = self.nic.translate(0x4000_1000, 8)
                        self.assertEqual(t.pages[0].phys_addr, buf.runs[0].phys_addr + PAGE)
                        # The walk (one leaf per call) holds the doorbell and both pages.
                        leaves = [(l.iova, l.phys_addr, l.size_bytes, l.mmio)
                                  for l in self.nic.walk_domain(dom.domain_id, page_leaves=1)]
                        self.assertIn((0x4000_0000, buf.runs[0].phys_addr, PAGE, False), leaves)
                        self.assertIn((0x4000_1000, buf.runs[0].phys_addr + PAGE, PAGE, False), leaves)
                        self.assertIn(cookie.msi_addr & ~(PAGE - 1), [l[0] for l in leaves if l[3]])
                        self.assertEqual(leaves, sorted(leaves))
                    self.assertTrue(rm.released)
                    self.assertEqual(self.nic.unmap_range(0x4000_0000, 2 * PAGE), 0)
                    with self.assertRaises(ib.FailedPrecondition):  # Map needs a DMA domain
                        self.nic.map(buf)
            finally:
                self.nic.detach_device()
            self.assertEqual(self.device_info(self.nic).current_domain_id,
                             nic_info.default_domain_id)
        with self.assertRaises(ib.NotFound):
            self.nic.get_domain(dom.domain_id)

    def test_default_domain_cannot_be_destroyed(self):
        default = self.device_info(self.nic).default_domain_id
        d = self.nic.get_domain(default)
        self.assertTrue(d.is_default)
        self.assertIn("nic0", d.devices)
        with self.assertRaises(ib.PermissionDenied):  # nic0 does not own it
            self.nic.destroy_domain(default)
        with self.assertRaises(ib.FailedPrecondition):
            self.admin.destroy_domain(default)

    def test_dma_fq_domain_and_stats(self):
        with self.nic.create_domain("smmu0", "dma_fq", granule_bytes=PAGE) as dom:
            self.nic.attach_device(dom.domain_id)
            try:
                with self.nic.buffer(PAGE) as buf:
                    with self.nic.map(buf):
                        pass
                    self.nic.sync()
                stats = self.nic.get_stats()
                (ds,) = [d for d in stats.domains if d.domain_id == dom.domain_id]
                self.assertIs(ds.type, ib.DomainType.DMA_FQ)
                self.assertFalse(ds.strict)
                self.assertGreaterEqual(ds.flush_queue.enqueued, 1)
                self.assertEqual(ds.flush_queue.depth, 0)
            finally:
                self.nic.detach_device()


class StatsTest(SdkTestCase):
    def test_translate_moves_iotlb_counters(self):
        def smmu0():
            (s,) = [s for s in self.admin.get_stats().smmus if s.name == "smmu0"]
            return s
        before = smmu0()
        with self.nic.buffer(PAGE) as buf, self.nic.map(buf) as m:
            for _ in range(3):
                self.assertFalse(self.nic.translate(m.dma_addr, 8).faulted)
        after = smmu0()
        self.assertEqual(after.iotlb.lookups - before.iotlb.lookups, 3)
        self.assertGreaterEqual(after.iotlb.hits - before.iotlb.hits, 2)
        self.assertEqual(after.translations_ok - before.translations_ok, 3)
        stats = self.admin.get_stats()
        self.assertTrue({"sram", "dram"} <= {p.name for p in stats.pools})
        self.assertGreater(stats.faults.capacity, 0)


class StreamTest(SdkTestCase):
    def test_watch_faults_sees_a_fault_with_its_sequence(self):
        fault = self.nic.translate(0x7000, 8, "write")
        self.assertTrue(fault.faulted)
        with self.nic.watch_faults(after_seq=fault.fault_seq - 1) as watch:
            event = next(iter(watch))
        record = event.records[0]
        self.assertEqual((record.seq, record.device, record.iova),
                         (fault.fault_seq, "nic0", 0x7000))
        self.assertIs(record.type, ib.FaultType.TRANSLATION)
        self.assertIs(record.access, ib.AccessKind.WRITE)
        self.assertEqual(record.access.name, "WRITE")

    def test_watch_faults_streams_new_faults_and_cancels(self):
        last = self.nic.translate(0x9000, 8).fault_seq
        events = []
        watch = self.nic.watch_faults(after_seq=last)

        def reader():
            for ev in watch:
                events.append(ev)
        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(0.2)
        new = self.nic.translate(0xA000, 8)
        deadline = time.monotonic() + 10
        while not events and time.monotonic() < deadline:
            time.sleep(0.02)
        watch.cancel()
        thread.join(10)
        self.assertFalse(thread.is_alive())
        self.assertEqual(events[0].records[0].seq, new.fault_seq)
        # A device sees only its own faults.
        self.assertTrue(all(r.device == "nic0" for ev in events for r in ev.records))

    def test_batch_maps_translates_and_reports_per_op_errors(self):
        with self.nic.buffer(PAGE) as a, self.nic.buffer(PAGE) as b, self.nic.batch() as batch:
            maps = batch.submit([ops.map(a), ops.map(b, direction="to_device")], check=True)
            self.assertEqual([r.WhichOneof("result") for r in maps], ["map", "map"])
            dma = [r.map.dma_addr for r in maps]
            results = batch.submit([ops.translate(dma[0], 8), ops.translate(dma[1], 8, "write"),
                                    ops.unmap(dma[0]), ops.unmap(dma[1]), ops.unmap(dma[1])])
            self.assertEqual(results[0].translate.phys_addr, a.runs[0].phys_addr)
            self.assertTrue(results[1].translate.faulted)
            self.assertEqual([r.code for r in results[2:]], [0, 0, 5])  # 5 = NOT_FOUND
            self.assertIn(f"dma_addr={dma[1]:#x}", results[4].message)
            with self.assertRaises(ib.NotFound):
                batch.submit([ops.unmap(dma[1])], check=True)
            sg = batch.submit([ops.map_sg([a, b], mode="merge")], check=True)[0].map_sg
            batch.submit([ops.unmap_sg(sg.iova)], check=True)
            self.assertEqual(self.nic.get_buffer(a.buffer_id).map_count, 0)


class LimitsTest(SdkTestCase):
    """What the daemon would refuse whole is refused before it is sent, and
    every reply it sends is received (the channel's limits are its
    --max_message_bytes): no call applies work whose result it then drops."""

    FLAGS = ("--auth=none", "--quota_buffer_bytes=4294967296")

    def test_a_batch_beyond_max_batch_ops_is_refused_before_sending(self):
        self.assertEqual(self.nic.max_message_bytes, ib.DEFAULT_MAX_MESSAGE_BYTES)
        with self.nic.buffer(PAGE) as buf, self.nic.batch() as batch:
            op = ops.map(buf, direction="to_device")
            with self.assertRaises(ib.ResourceExhausted) as e:
                batch.submit([op] * 300000)
            self.assertIn("300000 operations and 0 MapSg segments, more than max_batch_ops=8192",
                          e.exception.message)
            self.assertEqual(self.device_info(self.nic).mappings, 0)
            # A MapSg weighs one more per segment.
            with self.assertRaises(ib.ResourceExhausted):
                batch.submit([ops.map_sg([buf] * 8192)])
            # The stream is still usable.
            (mapped,) = batch.submit([op], check=True)
            batch.submit([ops.unmap(mapped.map.dma_addr)], check=True)

    def test_a_request_larger_than_a_message_is_refused_before_sending(self):
        with self.nic.buffer(PAGE) as buf:
            with self.assertRaises(ib.ResourceExhausted) as e:
                self.nic.map_sg([buf] * 600000)
            self.assertIn("more than max_message_bytes=4194304", e.exception.message)
            self.assertEqual(self.device_info(self.nic).mappings, 0)

    def test_a_buffer_whose_runs_could_not_be_sent_is_never_allocated(self):
        before = self.device_info(self.nic).buffers
        with self.assertRaises(ib.ResourceExhausted) as e:
            self.nic.alloc_buffer(2 << 30, "scattered")
        self.assertIn("--max_buffer_runs=131072", e.exception.message)
        self.assertEqual(self.device_info(self.nic).buffers, before)
        # The largest run list the daemon sends arrives whole.
        with self.nic.alloc_buffer(131072 * PAGE, "scattered") as largest:
            self.assertEqual(len(largest.runs), 131072)


class SessionTest(SdkTestCase):
    def test_closing_a_session_releases_what_it_created(self):
        with self.nic.session(ttl_ms=5000) as s:
            buf = s.client.alloc_buffer(PAGE)
            m = s.client.map(buf)
            sg_alloc = s.client.alloc(PAGE)
            self.assertEqual(self.nic.get_buffer(buf.buffer_id).map_count, 1)
        for call in (lambda: self.nic.get_buffer(buf.buffer_id),
                     lambda: self.nic.unmap(m.dma_addr),
                     lambda: self.nic.free(sg_alloc.dma_addr)):
            with self.assertRaises(ib.NotFound):
                call()
        with self.assertRaises(ib.NotFound):
            self.nic.keep_alive(s.id)

    def test_keepalive_holds_the_lease_and_a_dead_client_is_reclaimed(self):
        s = self.nic.session(ttl_ms=600)
        buf = s.client.alloc_buffer(PAGE)
        time.sleep(2.0)  # > 3 leases: only the keep-alive thread keeps it
        self.assertIsNone(s.keepalive_error)
        self.assertEqual(self.nic.get_buffer(buf.buffer_id).buffer_id, buf.buffer_id)
        s.stop_keepalive()  # the client "dies"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.nic.get_buffer(buf.buffer_id)
            except ib.NotFound:
                break
            time.sleep(0.1)
        else:
            self.fail("session buffer not reclaimed after the lease expired")
        with self.assertRaises(ib.NotFound):
            s.close()

    def test_a_killed_client_process_is_reclaimed_after_its_lease(self):
        code = textwrap.dedent(f"""
            import time, iommu_broker as ib
            c = ib.Client({self.daemon.unix_target!r}, device="nic0")
            s = c.session(ttl_ms=500)
            buf = s.client.alloc_buffer(4096)
            m = s.client.map(buf)
            print(buf.buffer_id, m.dma_addr, flush=True)
            time.sleep(60)
            """)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        buffer_id, dma_addr = map(int, proc.stdout.readline().split())
        time.sleep(1.5)  # three leases: alive only through its keep-alive thread
        self.assertEqual(self.nic.get_buffer(buffer_id).map_count, 1)
        self.assertFalse(self.nic.translate(dma_addr, 8).faulted)
        proc.kill()
        proc.wait()
        proc.stdout.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.nic.get_buffer(buffer_id)
            except ib.NotFound:
                break
            time.sleep(0.1)
        else:
            self.fail("the dead client's session was not reclaimed")
        self.assertTrue(self.nic.translate(dma_addr, 8).faulted)

    def test_raw_session_rpcs(self):
        r = self.nic.open_session(ttl_ms=10_000)
        self.assertEqual(r.ttl_ms, 10_000)
        self.nic.keep_alive(r.session_id)
        with self.assertRaises(ib.NotFound):  # another device's session is invisible
            self.nvme.close_session(r.session_id)
        self.nic.close_session(r.session_id)
        with self.assertRaises(ib.NotFound):
            self.nic.close_session(r.session_id)


class ErrorTest(SdkTestCase):
    """Bad input: each error is its exception class with the daemon's message
    naming field and value, and leaves the daemon's statistics unchanged."""

    def stats_snapshot(self):
        s = self.admin.get_stats().to_proto()  # a message to edit: views are read-only
        for smmu in s.smmus:  # lookups are not state; mappings, pools and domains are
            smmu.ClearField("iotlb")
            smmu.ClearField("translations_ok")
            smmu.ClearField("translations_fault")
        for d in s.domains:
            d.iova.ClearField("cache_hits")
            d.iova.ClearField("cache_misses")
        return s

    def test_bad_requests(self):
        with self.nic.buffer(PAGE) as buf, self.nvme.buffer(PAGE) as theirs:
            before = self.stats_snapshot()
            cases = [
                (ib.InvalidArgument, "mem.length_bytes=0:",
                 lambda: self.nic.map(buf, length_bytes=0)),
                (ib.InvalidArgument, "size_bytes=0:", lambda: self.nic.alloc_buffer(0)),
                (ib.InvalidArgument, "size_bytes=0:", lambda: self.nic.alloc(0)),
                (ib.InvalidArgument, "direction", lambda: self.nic.map(buf, direction=99)),
                (ib.InvalidArgument, "", lambda: self.nic.map(buf, direction=0)),
                (ib.InvalidArgument, "mode", lambda: self.nic.map_sg([buf], mode=0)),
                (ib.InvalidArgument, "placement", lambda: self.nic.alloc_buffer(PAGE, placement=7)),
                (ib.InvalidArgument, "type", lambda: self.nic.create_domain("smmu0", 42)),
                (ib.OutOfRange, "length_bytes", lambda: self.nic.map(buf, length_bytes=2 * PAGE)),
                (ib.OutOfRange, "", lambda: self.nic.map(buf, offset_bytes=2**64 - PAGE,
                                                         length_bytes=PAGE)),
                (ib.NotFound, "buffer_id=0x", lambda: self.nic.map(0xDEAD, length_bytes=PAGE)),
                (ib.NotFound, "dma_addr=0x1234000", lambda: self.nic.unmap(0x1234000)),
                (ib.NotFound, "dma_addr", lambda: self.nic.unmap_sg(0x1234000)),
                (ib.NotFound, "dma_addr", lambda: self.nic.free(0x1234000)),
                (ib.NotFound, "dma_addr", lambda: self.nic.get_sg_table(0x1234000)),
                (ib.NotFound, "device=\"nope0\"",
                 lambda: self.admin.as_device("nope0").alloc_buffer(PAGE)),
                (ib.NotFound, "domain_id=0x", lambda: self.nic.get_domain(999_999)),
                (ib.NotFound, "domain_id", lambda: self.nic.attach_device(999_999)),
                (ib.NotFound, "smmu", lambda: self.nic.create_domain("smmu9")),
                (ib.NotFound, "import_token", lambda: self.nic.map_sg(import_token="bogus")),
                (ib.NotFound, "session_id", lambda: self.nic.keep_alive(123_456_789)),
                (ib.InvalidArgument, "granule_bytes",
                 lambda: self.nic.create_domain("smmu0", "dma", granule_bytes=12345)),
                (ib.FailedPrecondition, "domain_id",
                 lambda: self.nic.map_at(0x1000, buf)),  # default domain is DMA, not UNMANAGED
                (ib.FailedPrecondition, "", lambda: self.nic.unmap_range(0x1000, PAGE)),
                (ib.NotFound, f"buffer_id={theirs.buffer_id:#x}",  # not yours = none
                 lambda: self.nic.map(theirs)),
                (ib.PermissionDenied, "phys_addr",
                 lambda: self.nic.map(ib.phys(0x8000_0000, PAGE))),
                # Another device's buffer does not exist for the caller.
                (ib.NotFound, f"buffer_id={buf.buffer_id:#x}",
                 lambda: self.nvme.free_buffer(buf.buffer_id)),
                (ib.ResourceExhausted, "size_bytes", lambda: self.nic.alloc_buffer(2**40)),
            ]
            for error, text, call in cases:
                with self.subTest(error=error.__name__, text=text):
                    with self.assertRaises(error) as cm:
                        call()
                    self.assertEqual(cm.exception.code, error.code)
                    self.assertIn(text, cm.exception.message)
                    self.assertIn("=", cm.exception.message)  # names field and value
            self.assertEqual(self.stats_snapshot(), before)

    def test_unknown_enum_names_fail_locally(self):
        with self.assertRaises(ValueError):
            self.nic.alloc_buffer(PAGE, placement="sideways")

    def test_every_grpc_code_maps_to_its_exception(self):
        for code in grpc.StatusCode:
            if code == grpc.StatusCode.OK:
                continue
            with self.subTest(code=code.name):
                e = ib.error_for(code, "x=0x1: why")
                self.assertEqual(type(e).__name__.upper(), code.name.replace("_", ""))
                self.assertIsInstance(e, ib.IommuError)
                self.assertEqual((e.code, e.message), (code, "x=0x1: why"))

    def test_a_stream_deadline_is_deadline_exceeded(self):
        with self.nic.watch_faults(after_seq=2**63, timeout=0.3) as watch:
            with self.assertRaises(ib.DeadlineExceeded):
                list(watch)

    def test_unreachable_daemon_is_unavailable_after_retries(self):
        gone = ib.Client(f"unix:{self.daemon.dir}/none.sock", timeout=0.5, retries=1)
        self.addCleanup(gone.close)
        with self.assertRaises(ib.Unavailable):
            gone.list_iommus()


class FaultRingTest(DaemonTestCase):
    FLAGS = ("--auth=none", "--fault_ring_size=8")

    def test_overwritten_records_are_counted_as_lost(self):
        nic = ib.Client(self.daemon.unix_target, device="nic0")
        self.addCleanup(nic.close)
        seqs = [nic.translate(0x1000 * (i + 1), 4).fault_seq for i in range(20)]
        lost, records = 0, []
        with nic.watch_faults(after_seq=0, timeout=10) as watch:
            for event in watch:
                lost += event.lost
                records.extend(event.records)
                if records and records[-1].seq == seqs[-1]:
                    break
        self.assertEqual([r.seq for r in records], seqs[-len(records):])
        self.assertLessEqual(len(records), 8)
        self.assertEqual(lost + len(records), 20)


class QuotaTest(DaemonTestCase):
    FLAGS = ("--auth=none", "--quota_buffers=2", "--quota_mappings=1")

    def test_quotas_are_resource_exhausted_and_leave_no_trace(self):
        nic = ib.Client(self.daemon.unix_target, device="nic0")
        self.addCleanup(nic.close)
        with nic.buffer(PAGE) as a, nic.buffer(PAGE) as b:
            with self.assertRaises(ib.ResourceExhausted) as cm:
                nic.alloc_buffer(PAGE)
            self.assertIn('device="nic0"', cm.exception.message)
            with nic.map(a):
                with self.assertRaises(ib.ResourceExhausted):
                    nic.map(b)
                self.assertEqual(nic.get_buffer(b.buffer_id).map_count, 0)
            with nic.map(b):  # the quota came back with the unmap
                pass
        (info,) = nic.list_devices()
        self.assertEqual((info.buffers, info.mappings), (0, 0))


@unittest.skipUnless(have_iommud(), "iommud not built")
class DrainTest(unittest.TestCase):
    """SIGTERM: streams end, the daemon drains and exits 0. Each test owns its daemon."""

    def start(self):
        daemon = Iommud("--auth=none", "--drain_timeout=3s")
        self.addCleanup(daemon.cleanup)
        self.addCleanup(daemon.stop)
        client = ib.Client(daemon.unix_target, device="nic0")
        return daemon, client

    def test_sigterm_ends_a_fault_watch(self):
        daemon, client = self.start()
        ended = threading.Event()
        seen = []

        def reader():
            for ev in client.watch_faults():
                seen.extend(ev.records)
            ended.set()  # the daemon ended the stream with OK: no exception
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        fault = client.translate(0x5000, 4)
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        daemon.proc.send_signal(signal.SIGTERM)
        self.assertTrue(ended.wait(10), "WatchFaults did not end on SIGTERM")
        self.assertEqual([r.seq for r in seen], [fault.fault_seq])
        client.close()
        self.assertEqual(daemon.stop(), 0, daemon.log())

    # iommud d1b6ea4 waited for --drain_timeout and exited 1 here.
    def test_sigterm_with_a_connected_idle_client_drains_cleanly(self):
        daemon, client = self.start()
        self.addCleanup(client.close)
        client.list_iommus()
        started = time.monotonic()
        self.assertEqual(daemon.stop(), 0, daemon.log())
        self.assertLess(time.monotonic() - started, 3.0)


@unittest.skipUnless(have_iommud(), "iommud not built")
class RestartTest(unittest.TestCase):
    """iommud SIGKILLed and restarted under device traffic. Each test owns its daemon."""

    def start(self):
        daemon = Iommud("--auth=none")
        self.addCleanup(daemon.cleanup)
        self.addCleanup(daemon.stop)
        client = ib.Client(daemon.unix_target, device="nic0", timeout=15.0)
        self.addCleanup(client.close)
        return daemon, client

    def kill_repeatedly(self, daemon, kills, stop):
        for k in range(kills):
            if stop.wait(0.15 + 0.037 * k):
                return
            daemon.kill()
            daemon.restart()

    def test_calls_cut_by_daemon_kills_take_effect_once(self):
        # Every call succeeds through the restarts, and the daemon holds
        # exactly what the acknowledged calls made: a call applied before a
        # kill and retried after it is answered, not applied again.
        daemon, client = self.start()
        stop = threading.Event()
        killer = threading.Thread(target=self.kill_repeatedly, args=(daemon, 8, stop))
        killer.start()
        buffers = mappings = 0
        try:
            while killer.is_alive():
                buf = client.alloc_buffer(PAGE)
                buffers += 1
                m = client.map(buf)
                if buffers % 2:
                    m.release()  # an Unmap retried after it took effect is not NotFound
                else:
                    mappings += 1
        finally:
            stop.set()
            killer.join()
        (info,) = [d for d in client.as_device("").list_devices() if d.config.name == "nic0"]
        self.assertEqual((info.buffers, info.mappings), (buffers, mappings))
        self.assertGreater(buffers, 8)

    def test_closing_a_batch_stream_broken_while_idle_is_no_error(self):
        daemon, client = self.start()
        with client.buffer(PAGE, placement="contiguous") as buf:
            batch = client.batch()
            (result,) = batch.submit([ops.map(buf, 0, PAGE)], check=True)
            daemon.kill()
            batch.close()  # answered before the kill: nothing to report
            daemon.restart()
            (info,) = [d for d in client.as_device("").list_devices() if d.config.name == "nic0"]
            self.assertEqual(info.mappings, 1)
            client.unmap(result.map.dma_addr)

    def test_batch_messages_cut_by_daemon_kills_take_effect_once(self):
        daemon, client = self.start()
        stop = threading.Event()
        killer = threading.Thread(target=self.kill_repeatedly, args=(daemon, 6, stop))
        killer.start()
        messages = 0
        with client.buffer(16 * PAGE, placement="contiguous") as buf:
            try:
                with client.batch() as batch:
                    while killer.is_alive():
                        results = batch.submit([ops.map(buf, i * PAGE, PAGE) for i in range(16)],
                                               check=True)
                        batch.submit([ops.unmap(r.map.dma_addr) for r in results], check=True)
                        messages += 2
            finally:
                stop.set()
                killer.join()
            (info,) = [d for d in client.as_device("").list_devices() if d.config.name == "nic0"]
            self.assertEqual(info.mappings, 0)
        self.assertGreater(messages, 6)


if __name__ == "__main__":
    run_tests()
