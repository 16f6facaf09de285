# SPDX-License-Identifier: Apache-2.0
"""Identity through the Python SDK against the real iommud: --auth=token over
TLS and --auth=mtls (a CA and certificates generated with openssl at test
time), over the Unix socket and TCP. A device acts only as itself and cannot
call admin RPCs; a missing or bad credential is UNAUTHENTICATED; a plaintext
client never reaches a TLS daemon.
"""
import os
import shutil
import tempfile
import unittest

import grpc

import iommu_broker as ib
from iommud_harness import DaemonTestCase, run_tests
from pki import make_pki

PAGE = 4096


class IdentityChecks:
    """Shared by both auth modes: subclasses provide client(name, device="")."""

    def test_device_acts_as_itself(self):
        nic = self.client("nic0", device="nic0")
        self.assertEqual([d.config.name for d in nic.list_devices()], ["nic0"])
        with nic.buffer(PAGE) as buf, nic.map(buf) as m:
            self.assertFalse(nic.translate(m.dma_addr, 8).faulted)

    def test_empty_device_means_the_credential_device(self):
        nic = self.client("nic0")
        self.assertEqual([d.config.name for d in nic.list_devices()], ["nic0"])
        with nic.buffer(PAGE) as buf:
            self.assertEqual(buf.device, "nic0")

    def test_device_cannot_act_as_another(self):
        nic = self.client("nic0", device="nvme0")
        with self.assertRaises(ib.PermissionDenied) as cm:
            nic.alloc_buffer(PAGE)
        self.assertIn('device="nvme0"', cm.exception.message)

    def test_device_cannot_touch_another_devices_memory_or_mappings(self):
        nic = self.client("nic0", device="nic0")
        nvme = self.client("nvme0", device="nvme0")
        with nvme.buffer(PAGE) as theirs, nvme.map(theirs) as their_map:
            with self.assertRaises(ib.NotFound):  # not yours answers as none
                nic.map(theirs)
            with self.assertRaises(ib.PermissionDenied):
                nic.map(ib.phys(theirs.runs[0].phys_addr, PAGE))
            with self.assertRaises(ib.NotFound):
                nic.free_buffer(theirs.buffer_id)
            with self.assertRaises(ib.NotFound):
                nic.unmap(their_map.dma_addr)  # not in nic0's domain, nor its mapping

    def test_device_cannot_call_admin_rpcs(self):
        nic = self.client("nic0", device="nic0")
        with self.assertRaises(ib.PermissionDenied):
            nic.translate(0x1000, 8, smmu="smmu0", stream_id=0x200)
        with self.assertRaises(ib.PermissionDenied):
            nic.create_domain("smmu1")  # not its SMMU

    def test_admin_acts_as_any_device(self):
        admin = self.client("admin")
        self.assertGreaterEqual(len(admin.list_devices()), 5)
        as_nvme = admin.as_device("nvme0")
        with as_nvme.buffer(PAGE) as buf:
            self.assertEqual(buf.device, "nvme0")
        with admin.create_domain("smmu1", "unmanaged") as dom:
            self.assertEqual(dom.owner, "")
        self.assertTrue(admin.translate(0x1000, 8, smmu="smmu0", stream_id=0x200).faulted)


class TokenAuthTest(IdentityChecks, DaemonTestCase):
    TOKENS = {"nic0": "nic-secret-6c0d2f9a41", "nvme0": "nvme-secret-93e1b7c5d2",
              "admin": "admin-secret-2a7f4e8b10"}

    @classmethod
    def setUpClass(cls):
        if shutil.which("openssl") is None:
            raise unittest.SkipTest("openssl not installed")
        cls.tmp = tempfile.mkdtemp(prefix="iommu-token-")
        cls.pki = make_pki(cls.tmp)
        token_file = os.path.join(cls.tmp, "tokens")
        with open(token_file, "w") as f:
            f.write("# token identity\n")
            for who, token in cls.TOKENS.items():
                f.write(f"{token} {who}\n")
        cert, key = cls.pki["server"]
        cls.FLAGS = ("--auth=token", f"--token_file={token_file}", f"--tls_cert={cert}",
                     f"--tls_key={key}")
        super().setUpClass()

    @classmethod
    def daemon_kwargs(cls):
        with open(cls.pki["ca"][0], "rb") as ca:
            creds = grpc.ssl_channel_credentials(ca.read())
        return {"channel_credentials": creds, "tls_server_name": "localhost"}

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def client(self, who, device="", target=None, token=None):
        c = ib.Client(target or self.daemon.unix_target, device=device,
                      token=token if token is not None else self.TOKENS[who],
                      tls=ib.TlsConfig(ca=self.pki["ca"][0]))
        self.addCleanup(c.close)
        return c

    def test_missing_or_bad_token_is_unauthenticated(self):
        anonymous = ib.Client(self.daemon.unix_target, device="nic0",
                              tls=ib.TlsConfig(ca=self.pki["ca"][0]))
        self.addCleanup(anonymous.close)
        with self.assertRaises(ib.Unauthenticated):
            anonymous.list_iommus()
        c = self.client("nic0", device="nic0", token="wrong-secret-0123456789")
        with self.assertRaises(ib.Unauthenticated):
            c.list_iommus()

    def test_tcp_transport(self):
        for who in ("nic0", "admin"):
            with self.subTest(who=who):
                c = self.client(who, device="", target=self.daemon.tcp_target)
                names = [d.config.name for d in c.list_devices()]
                if who == "admin":
                    self.assertGreaterEqual(len(names), 5)
                else:
                    self.assertEqual(names, ["nic0"])

    def test_token_without_tls_is_refused_by_the_sdk(self):
        with self.assertRaises(ib.InvalidArgument) as cm:
            ib.Client(self.daemon.tcp_target, device="nic0", token=self.TOKENS["nic0"])
        self.assertTrue(cm.exception.message.startswith("tls=None"), cm.exception.message)

    def test_plaintext_client_is_refused(self):
        for target in (self.daemon.unix_target, self.daemon.tcp_target):
            with self.subTest(target=target):
                c = ib.Client(target, device="nic0", timeout=3.0, retries=0)
                self.addCleanup(c.close)
                with self.assertRaises(ib.Unavailable):
                    c.list_iommus()


class MtlsAuthTest(IdentityChecks, DaemonTestCase):
    @classmethod
    def setUpClass(cls):
        if shutil.which("openssl") is None:
            raise unittest.SkipTest("openssl not installed")
        cls.tmp = tempfile.mkdtemp(prefix="iommu-pki-")
        cls.pki = make_pki(cls.tmp)
        cert, key = cls.pki["server"]
        cls.FLAGS = ("--auth=mtls", f"--tls_cert={cert}", f"--tls_key={key}",
                     f"--tls_ca={cls.pki['ca'][0]}")
        super().setUpClass()

    @classmethod
    def daemon_kwargs(cls):
        cert, key = cls.pki["admin"]
        with open(cls.pki["ca"][0], "rb") as ca, open(cert, "rb") as c, open(key, "rb") as k:
            creds = grpc.ssl_channel_credentials(ca.read(), k.read(), c.read())
        return {"channel_credentials": creds, "tls_server_name": "localhost"}

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def client(self, who, device="", target=None, with_cert=True):
        cert, key = self.pki[who] if with_cert else (None, None)
        tls = ib.TlsConfig(ca=self.pki["ca"][0], cert=cert, key=key, server_name="localhost")
        c = ib.Client(target or self.daemon.unix_target, device=device, tls=tls)
        self.addCleanup(c.close)
        return c

    def test_dns_san_maps_to_a_device(self):
        nvme = self.client("nvme0")
        self.assertEqual([d.config.name for d in nvme.list_devices()], ["nvme0"])

    def test_tcp_transport(self):
        c = self.client("nic0", device="nic0", target=self.daemon.tcp_target)
        self.assertEqual([d.config.name for d in c.list_devices()], ["nic0"])

    def test_missing_certificate_is_unauthenticated(self):
        c = self.client("nic0", device="nic0", with_cert=False)
        with self.assertRaises(ib.Unauthenticated):
            c.list_iommus()

    def test_certificate_from_another_ca_is_refused(self):
        c = self.client("rogue", device="nic0")
        c.timeout = 3.0
        # Refused in the TLS handshake (no channel) or by the daemon: never served.
        with self.assertRaises((ib.Unauthenticated, ib.Unavailable)):
            c.list_iommus()

    def test_plaintext_client_is_refused(self):
        c = ib.Client(self.daemon.unix_target, device="nic0", timeout=3.0, retries=0)
        self.addCleanup(c.close)
        with self.assertRaises(ib.Unavailable):
            c.list_iommus()


if __name__ == "__main__":
    run_tests()
