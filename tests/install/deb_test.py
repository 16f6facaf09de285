# SPDX-License-Identifier: Apache-2.0
"""The Debian packages as `make deb` makes them: `cpack -G DEB` over the build
tree, then each .deb read with dpkg-deb: its fields (name, version, Depends),
its files, its control files (the conffile, the maintainer scripts), and,
unpacked into a temporary root with `dpkg-deb -x` (no chroot, nothing
installed), the systemd unit, checked by `systemd-analyze verify` where
systemd-analyze exists (the check is skipped, saying so, where it does not),
and the packaged iommud started on the packaged configuration."""
import os
import pathlib
import re
import shutil
import tempfile
import unittest

import harness as h

VERSION = h.project_version()
DEB_VERSION = f"{VERSION}-1"
ARCH = h.run("dpkg", "--print-architecture").stdout.strip()
PACKAGES = ("iommud", "iommuctl", "libiommu-broker-client-dev")
HARDENING = ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
             "PrivateDevices=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
             "ProtectControlGroups=yes", "RestrictSUIDSGID=yes", "CapabilityBoundingSet=",
             "SystemCallFilter=@system-service", "MemoryDenyWriteExecute=yes"]


def depends(field):
    """Depends as {package: [constraints]}."""
    out = {}
    for item in filter(None, (i.strip() for i in field.split(","))):
        m = re.fullmatch(r"([a-z0-9.+-]+)(?::any)?\s*(?:\(([^)]*)\))?", item.split("|")[0].strip())
        out.setdefault(m.group(1), []).append(m.group(2) or "")
    return out


class DebTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix="iommu-deb-"))
        out = cls.tmp / "out"
        h.run(h.CPACK, "-G", "DEB", "-B", out, "--config", h.BUILD_DIR / "CPackConfig.cmake",
              cwd=h.BUILD_DIR, env=h.clean_env())
        cls.debs = {p: out / f"{p}_{DEB_VERSION}_{ARCH}.deb" for p in PACKAGES}
        cls.contents, cls.fields, cls.control = {}, {}, {}
        for package, deb in cls.debs.items():
            if not deb.is_file():
                raise AssertionError(f"{deb.name} not made; made: "
                                     f"{sorted(p.name for p in out.glob('*.deb'))}")
            listing = h.run("dpkg-deb", "-c", deb).stdout
            cls.contents[package] = {line.split()[-1].lstrip(".") if " -> " not in line else
                                     line.split()[-3].lstrip(".") for line in listing.splitlines()}
            cls.fields[package] = h.run("dpkg-deb", "-f", deb).stdout
            control = cls.tmp / "control" / package
            control.parent.mkdir(exist_ok=True)
            h.run("dpkg-deb", "-e", deb, control)
            cls.control[package] = control
        cls.root = cls.tmp / "root"
        for deb in cls.debs.values():
            h.run("dpkg-deb", "-x", deb, cls.root)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def field(self, package, name):
        m = re.search(rf"^{name}: (.*)$", self.fields[package], re.M)
        self.assertIsNotNone(m, f"{package} has no {name}:\n{self.fields[package]}")
        return m.group(1)

    def test_names_versions_and_info(self):
        for package, deb in self.debs.items():
            self.assertEqual(self.field(package, "Package"), package)
            self.assertEqual(self.field(package, "Version"), DEB_VERSION)
            self.assertEqual(self.field(package, "Architecture"), ARCH)
            info = h.run("dpkg-deb", "-I", deb).stdout
            self.assertIn(f" Package: {package}\n", info)
        self.assertEqual(self.field("iommud", "Section"), "admin")
        self.assertEqual(self.field("libiommu-broker-client-dev", "Section"), "libdevel")

    def test_binaries_depend_on_the_shared_libraries_they_link(self):
        for package in ("iommud", "iommuctl"):
            deps = depends(self.field(package, "Depends"))
            for lib in ("libc6", "libstdc++6", "libgrpc++1.51", "libprotobuf32",
                        "libabsl20220623"):
                self.assertIn(lib, deps, f"{package}: Depends {deps}")
        deps = depends(self.field("iommud", "Depends"))
        for lib in ("adduser", "liblmdb0", "librocksdb7.8", "libsqlite3-0",
                    "libprometheus-cpp-pull1.0", "libspdlog1.10"):
            self.assertTrue([d for d in deps if d.startswith(lib)], f"{lib}: iommud Depends {deps}")
        self.assertNotIn("liblmdb0", depends(self.field("iommuctl", "Depends")))

    def test_sdk_depends_on_the_headers_it_includes(self):
        deps = depends(self.field("libiommu-broker-client-dev", "Depends"))
        self.assertEqual(sorted(deps), ["libabsl-dev", "libgrpc++-dev", "libprotobuf-dev"])
        # The generated headers need protobuf's minor version they were made with.
        self.assertEqual(sorted(deps["libprotobuf-dev"]), sorted([">= 3.21", "<< 3.22~"]))
        self.assertEqual(sorted(deps["libabsl-dev"]), sorted([">= 20220623", "<< 20220624~"]))

    def test_files(self):
        expected = {
            "iommud": ["/usr/bin/iommud", "/usr/lib/systemd/system/iommud.service",
                       "/etc/iommud/iommud.conf", "/usr/share/doc/iommud/copyright",
                       "/usr/share/doc/iommud/README.md", "/usr/share/doc/iommud/CHANGELOG.md"],
            "iommuctl": ["/usr/bin/iommuctl", "/usr/share/doc/iommuctl/copyright",
                         "/usr/share/man/man1/iommuctl.1",
                         "/usr/share/bash-completion/completions/iommuctl"],
            "libiommu-broker-client-dev": [
                "/usr/lib/libiommu-broker-client.a", "/usr/lib/libiommu-broker-proto.a",
                "/usr/include/iommu-broker/client/client.h",
                "/usr/include/iommu-broker/client/version.h",
                "/usr/include/iommu-broker/iommu/v1/dma.pb.h",
                "/usr/include/iommu-broker/iommu/v1/dma.grpc.pb.h",
                "/usr/lib/cmake/iommu-broker/iommu-brokerConfig.cmake",
                "/usr/lib/cmake/iommu-broker/iommu-brokerConfigVersion.cmake",
                "/usr/lib/cmake/iommu-broker/iommu-brokerTargets.cmake",
                "/usr/lib/pkgconfig/iommu-broker-client.pc",
                "/usr/share/doc/libiommu-broker-client-dev/copyright"],
        }
        for package, files in expected.items():
            for f in files:
                self.assertIn(f, self.contents[package], f"{package} lacks {f}")
        # Each file in one package only; no package carries the build tree.
        owners = {}
        for package, files in self.contents.items():
            for f in files:
                if not f.endswith("/"):
                    self.assertNotIn(f, owners, f"{f} in {package} and {owners.get(f)}")
                    owners[f] = package
        self.assertFalse([f for f in owners if "/bin/" in f and owners[f] ==
                          "libiommu-broker-client-dev"])
        pc = (self.root / "usr/lib/pkgconfig/iommu-broker-client.pc").read_text()
        self.assertIn("prefix=/usr\n", pc)
        self.assertIn(f"Version: {VERSION}\n", pc)
        # Stripped: no debugging sections in the binaries.
        for binary in ("iommud", "iommuctl"):
            sections = h.run("readelf", "-S", self.root / "usr/bin" / binary).stdout
            self.assertNotIn(".debug_info", sections, binary)

    def test_conffile_and_maintainer_scripts(self):
        control = self.control["iommud"]
        self.assertEqual((control / "conffiles").read_text().split(), ["/etc/iommud/iommud.conf"])
        for script in ("postinst", "prerm", "postrm"):
            mode = os.stat(control / script).st_mode & 0o777
            self.assertEqual(mode, 0o755, f"{script} mode {mode:o}")
            self.assertEqual(h.run("sh", "-n", control / script).returncode, 0)
        postinst = (control / "postinst").read_text()
        self.assertRegex(postinst, r"adduser --quiet --system --ingroup iommud .*iommud")
        self.assertIn("install -d -o iommud -g iommud -m 0700 /var/lib/iommud", postinst)
        self.assertIn("deb-systemd-helper enable iommud.service", postinst)
        self.assertIn("deb-systemd-invoke stop iommud.service", (control / "prerm").read_text())
        self.assertIn("rm -rf /var/lib/iommud", (control / "postrm").read_text())
        for package in ("iommuctl", "libiommu-broker-client-dev"):
            self.assertEqual(sorted(p.name for p in self.control[package].iterdir()),
                             ["control", "md5sums"], package)

    def unit(self):
        return (self.root / "usr/lib/systemd/system/iommud.service").read_text()

    def test_unit(self):
        unit = self.unit()
        for line in ["ExecStart=/usr/bin/iommud --flagfile=/etc/iommud/iommud.conf",
                     "User=iommud", "Group=iommud", "StateDirectory=iommud",
                     "StateDirectoryMode=0700", "RuntimeDirectory=iommud",
                     "WantedBy=multi-user.target", *HARDENING]:
            self.assertIn(f"\n{line}\n", unit)
        conf = (self.root / "etc/iommud/iommud.conf").read_text()
        self.assertIn("\n--state_dir=/var/lib/iommud\n", conf)
        self.assertIn("\n--listen=unix:/run/iommud/iommud.sock\n", conf)

    def test_systemd_analyze_verify(self):
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            self.skipTest("systemd-analyze not installed: the unit is not verified by systemd")
        # verify checks that ExecStart's binary exists: a copy of the unit
        # names the unpacked one (--root= would also need systemd's own units).
        unit = self.unit()
        self.assertIn("\nExecStart=/usr/bin/iommud ", unit)
        copy = self.tmp / "verify" / "iommud.service"
        copy.parent.mkdir()
        copy.write_text(unit.replace("\nExecStart=/usr/bin/iommud ",
                                     f"\nExecStart={self.root}/usr/bin/iommud "))
        r = h.run(analyze, "verify", copy, check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # Unknown keys and bad values are warnings on stderr, not failures.
        self.assertNotIn("iommud.service", r.stdout + r.stderr)
        # systemd's own score of the hardening: 0 (locked down) to 10 (none).
        r = h.run(analyze, "security", "--offline=yes", copy, check=False)
        m = re.search(r"Overall exposure level for iommud.service: ([0-9.]+)", r.stdout)
        self.assertIsNotNone(m, r.stdout + r.stderr)
        self.assertLessEqual(float(m.group(1)), 2.0, r.stdout)

    def test_packaged_daemon_serves_on_the_packaged_configuration(self):
        # The packaged flags, with the socket and state moved into a temporary
        # directory (later flags win): the packaged binary starts on them.
        bin_dir = self.root / "usr" / "bin"
        d = h.Daemon(bin_dir / "iommud", bin_dir / "iommuctl",
                     leading=[f"--flagfile={self.root}/etc/iommud/iommud.conf"])
        try:
            # The configuration's socket mode, for group iommud.
            self.assertEqual(os.stat(d.dir / "iommud.sock").st_mode & 0o777, 0o660)
            r = h.run(bin_dir / "iommuctl", f"--target={d.target}", "--device=nic0",
                      "list-devices")
            self.assertIn("nic0", r.stdout)
            self.assertEqual(h.run(bin_dir / "iommud", "--version").stdout, f"iommud {VERSION}\n")
        finally:
            self.assertEqual(d.stop(), 0, d.log())
            d.cleanup()


if __name__ == "__main__":
    unittest.main(verbosity=2)
