# SPDX-License-Identifier: Apache-2.0
"""The project as a user installs it: `cmake --install` of the build tree into
a fresh prefix, then, away from the source and build trees, the installed
iommud and iommuctl, the C++ examples built against the installed SDK (once
through find_package(iommu-broker), once through pkg-config) and the Python
example on the pip-installed Python package, each run against the installed
iommud.

Every program is built from a copy of examples/ in a temporary directory,
with CMAKE_PREFIX_PATH or PKG_CONFIG_PATH naming only the prefix, so nothing
of the source or build tree can be found by accident."""
import pathlib
import re
import shutil
import sys
import tempfile
import unittest

import harness as h

VERSION = h.project_version()

# What the examples print, step by step (C++ and Python alike); the Python one
# also prints the fault record the stream reported.
EXAMPLE_LINES = [
    r"buffer (?P<buffer>\d+): 65536 bytes at phys (?P<phys>0x[0-9a-f]+) on device nic0",
    r"mapped 16384 bytes to_device: dma_addr (?P<dma>0x[0-9a-f]+) in domain \d+",
    r"device read at dma_addr\+0x1000: phys (?P<read>0x[0-9a-f]+)",
    r"device write at dma_addr\+0x1000: fault (FAULT_TYPE_)?PERMISSION \(seq \d+\)",
    r"unmapped dma_addr (?P<unmapped>0x[0-9a-f]+)",
    r"device read after unmap: fault (FAULT_TYPE_)?TRANSLATION",
]


class InstallTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix="iommu-install-"))
        cls.prefix = cls.tmp / "prefix"
        h.run(h.CMAKE, "--install", h.BUILD_DIR, "--prefix", cls.prefix)
        cls.examples = cls.tmp / "examples"
        shutil.copytree(h.SOURCE_DIR / "examples", cls.examples)
        cls.daemon = h.Daemon(cls.prefix / "bin" / "iommud", cls.prefix / "bin" / "iommuctl")

    @classmethod
    def tearDownClass(cls):
        code = cls.daemon.stop()
        log = cls.daemon.log() if code != 0 else ""
        cls.daemon.cleanup()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        if code != 0:
            raise AssertionError(f"iommud exited {code} on SIGTERM:\n{log}")

    def check_example_output(self, stdout, extra_lines=()):
        lines = stdout.splitlines()
        expected = [rf"sdk {re.escape(VERSION)}.*"] + EXAMPLE_LINES + list(extra_lines) + [
            r"freed buffer (?P<freed>\d+)"]
        self.assertEqual(len(lines), len(expected), stdout)
        values = {}
        for line, pattern in zip(lines, expected):
            m = re.fullmatch(pattern, line)
            self.assertIsNotNone(m, f"{line!r} does not match {pattern!r} in:\n{stdout}")
            values.update({k: v for k, v in m.groupdict().items() if v is not None})
        # The device's read reached the buffer's second page; what was
        # unmapped and freed is what was mapped and allocated.
        self.assertEqual(int(values["read"], 16), int(values["phys"], 16) + 4096, stdout)
        self.assertEqual(values["unmapped"], values["dma"])
        self.assertEqual(values["freed"], values["buffer"])
        return lines

    def test_installed_files(self):
        p = self.prefix
        for f in ["bin/iommud", "bin/iommuctl", "share/man/man1/iommuctl.1",
                  "share/bash-completion/completions/iommuctl",
                  f"{h.LIBDIR}/libiommu-broker-client.a", f"{h.LIBDIR}/libiommu-broker-proto.a",
                  "include/iommu-broker/client/client.h", "include/iommu-broker/client/version.h",
                  "include/iommu-broker/client/session.h", "include/iommu-broker/client/batch.h",
                  "include/iommu-broker/iommu/v1/dma.pb.h",
                  "include/iommu-broker/iommu/v1/dma.grpc.pb.h",
                  "include/iommu-broker/iommu/v1/dma.proto",
                  f"{h.LIBDIR}/cmake/iommu-broker/iommu-brokerConfig.cmake",
                  f"{h.LIBDIR}/cmake/iommu-broker/iommu-brokerConfigVersion.cmake",
                  f"{h.LIBDIR}/cmake/iommu-broker/iommu-brokerTargets.cmake",
                  f"{h.LIBDIR}/pkgconfig/iommu-broker-client.pc",
                  "lib/systemd/system/iommud.service", "etc/iommud/iommud.conf",
                  "share/doc/iommud/README.md", "share/doc/iommud/copyright",
                  "share/doc/libiommu-broker-client-dev/copyright"]:
            self.assertTrue((p / f).is_file(), f"{f} not installed")
        # Every header the SDK's installed headers include is installed too.
        include = p / "include" / "iommu-broker"
        for header in include.rglob("*.h"):
            for name in re.findall(r'#include "((?:client|iommu)/[^"]+)"', header.read_text()):
                self.assertTrue((include / name).is_file(), f"{header} includes missing {name}")
        # The unit and the .pc name where they were installed, not the build's prefix.
        unit = (p / "lib/systemd/system/iommud.service").read_text()
        self.assertIn(f"ExecStart={p}/bin/iommud --flagfile={p}/etc/iommud/iommud.conf\n", unit)
        pc = (p / f"{h.LIBDIR}/pkgconfig/iommu-broker-client.pc").read_text()
        self.assertIn(f"prefix={p}\n", pc)
        self.assertIn(f"Version: {VERSION}\n", pc)
        self.assertNotIn(str(h.BUILD_DIR), pc + unit)
        self.assertNotIn(str(h.SOURCE_DIR), pc + unit)
        cmake_dir = p / h.LIBDIR / "cmake" / "iommu-broker"
        targets = "".join(f.read_text() for f in cmake_dir.glob("*.cmake"))
        self.assertNotIn(str(h.BUILD_DIR), targets)
        self.assertNotIn(str(h.SOURCE_DIR), targets)

    def test_installed_binaries_report_the_version(self):
        for binary in ("iommud", "iommuctl"):
            r = h.run(self.prefix / "bin" / binary, "--version")
            self.assertEqual(r.stdout, f"{binary} {VERSION}\n")

    def compiler_env(self, **extra):
        """With ccache where it is installed, its paths relative to the
        temporary directory, so a later run of this test compiles nothing again."""
        return h.clean_env(CCACHE_BASEDIR=str(self.tmp), CCACHE_NOHASHDIR="1", **extra)

    def launcher(self):
        return [shutil.which("ccache")] if shutil.which("ccache") else []

    def test_cpp_example_through_find_package(self):
        src, build = self.examples / "cpp", self.tmp / "build-cmake"
        launcher = self.launcher()
        h.run(h.CMAKE, "-S", src, "-B", build, f"-DCMAKE_PREFIX_PATH={self.prefix}",
              f"-DCMAKE_CXX_COMPILER={h.CXX}", "-DCMAKE_BUILD_TYPE=Release",
              *([f"-DCMAKE_CXX_COMPILER_LAUNCHER={launcher[0]}"] if launcher else []),
              env=self.compiler_env())
        h.run(h.CMAKE, "--build", build, env=self.compiler_env())
        r = h.run(build / "dma_example", f"--target={self.daemon.target}", "--device=nic0")
        lines = self.check_example_output(r.stdout)
        self.assertEqual(lines[0], f"sdk {VERSION} (headers {VERSION})")

    def test_find_package_checks_the_version(self):
        # A project asking for x.y finds x.y.z (z any), not another minor version.
        major, minor, _ = VERSION.split(".")
        for requested, found in ((f"{major}.{minor}", True), (f"{major}.{int(minor) + 1}", False)):
            src = self.tmp / f"find-{requested}"
            src.mkdir()
            (src / "CMakeLists.txt").write_text(
                "cmake_minimum_required(VERSION 3.16)\nproject(find LANGUAGES CXX)\n"
                f"find_package(iommu-broker {requested} CONFIG REQUIRED)\n"
                'message(STATUS "iommu-broker ${iommu-broker_VERSION}")\n')
            r = h.run(h.CMAKE, "-S", src, "-B", src / "build", f"-DCMAKE_PREFIX_PATH={self.prefix}",
                      check=False)
            if found:
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertIn(f"-- iommu-broker {VERSION}\n", r.stdout)
            else:
                self.assertNotEqual(r.returncode, 0, r.stdout)
                self.assertIn(f"version: {VERSION}", r.stderr)

    def test_cpp_example_through_pkg_config(self):
        env = self.compiler_env(PKG_CONFIG_PATH=str(self.prefix / h.LIBDIR / "pkgconfig"))
        self.assertEqual(h.run("pkg-config", "--modversion", "iommu-broker-client",
                               env=env).stdout.strip(), VERSION)
        cflags = h.run("pkg-config", "--cflags", "iommu-broker-client", env=env).stdout.split()
        libs = h.run("pkg-config", "--libs", "iommu-broker-client", env=env).stdout.split()
        binary = self.tmp / "dma_example_pc"
        h.run(*self.launcher(), h.CXX, "-std=c++20", "-O1", *cflags, "-c",
              self.examples / "cpp" / "dma_example.cc", "-o", f"{binary}.o", env=env, cwd=self.tmp)
        h.run(h.CXX, f"{binary}.o", "-o", binary, *libs, env=env, cwd=self.tmp)
        r = h.run(binary, f"--target={self.daemon.target}", "--device=gpu0")
        lines = self.check_example_output(r.stdout.replace("on device gpu0", "on device nic0"))
        self.assertEqual(lines[0], f"sdk {VERSION} (headers {VERSION})")

    def test_python_example_on_the_installed_package(self):
        venv = self.tmp / "venv"
        h.run(sys.executable, "-m", "venv", "--system-site-packages", venv)
        package = self.tmp / "python-package"  # pip builds in the tree it is given
        shutil.copytree(h.BUILD_DIR / "client" / "python", package, ignore=shutil.ignore_patterns(
            "CMakeFiles", "*.cmake", "__pycache__", "build", "*.egg-info", ".mypy_cache"))
        python = venv / "bin" / "python"
        h.run(python, "-m", "pip", "install", "--isolated", "--no-index", "--no-build-isolation",
              package, cwd=self.tmp)
        r = h.run(python, self.examples / "python" / "dma_example.py",
                  f"--target={self.daemon.target}", "--device=nvme0", cwd=self.tmp)
        lines = self.check_example_output(
            r.stdout.replace("on device nvme0", "on device nic0"),
            extra_lines=[r"fault record \d+: PERMISSION WRITE at iova 0x[0-9a-f]+ by nvme0"])
        self.assertEqual(lines[0], f"sdk {VERSION}")
        # The fault record is the write's, at the address written.
        dma = int(re.search(r"dma_addr (0x[0-9a-f]+) in", r.stdout).group(1), 16)
        record_iova = int(re.search(r"at iova (0x[0-9a-f]+) by", r.stdout).group(1), 16)
        self.assertEqual(record_iova & ~0xfff, (dma + 4096) & ~0xfff)


if __name__ == "__main__":
    unittest.main(verbosity=2)
