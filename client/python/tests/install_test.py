# SPDX-License-Identifier: Apache-2.0
"""The package as a user installs it: pip into a fresh venv, offline, then
imported and used from outside the source and build trees, with no
PYTHONPATH.

- From the laid-out build tree ($IOMMU_PYTHON_PACKAGE, what the CMake target
  iommu_python wrote) and from a copy of a source checkout ($IOMMU_SOURCE_ROOT:
  the top-level CMakeLists.txt, proto/ and client/python), each into a venv
  made with --system-site-packages and `pip install --no-build-isolation
  --no-index`, so Debian's grpcio and protobuf must satisfy the declared
  dependencies. The installed package has the project version, py.typed and
  its type stubs, and (with $IOMMUD) maps, translates and reads a fault of a
  real daemon with enum members in what it returns.
- In a venv without the system's packages, importing it says that the grpc
  module is missing and names python3-grpcio; with grpc present and protobuf
  hidden, it names python3-protobuf; from the bare source directory, it says
  the generated modules are missing and how to build them.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

from iommud_harness import Iommud, have_iommud

PACKAGE = pathlib.Path(os.environ["IOMMU_PYTHON_PACKAGE"])
SOURCE_ROOT = pathlib.Path(os.environ["IOMMU_SOURCE_ROOT"])
VERSION = re.search(r"project\(\s*iommu_broker\s+VERSION\s+([0-9.]+)",
                    (SOURCE_ROOT / "CMakeLists.txt").read_text()).group(1)

# Run inside the venv: prints what the installed package is and does.
USE = textwrap.dedent("""
    import importlib.metadata, json, os, sys
    import iommu_broker as ib
    out = {"file": ib.__file__, "version": ib.__version__,
           "dist_version": importlib.metadata.version("iommu-broker"),
           "requires": importlib.metadata.requires("iommu-broker"),
           "py_typed": os.path.exists(os.path.join(os.path.dirname(ib.__file__), "py.typed")),
           "stubs": sorted(f for f in os.listdir(os.path.join(
               os.path.dirname(ib.__file__), "_generated", "iommu", "v1")) if f.endswith(".pyi"))}
    target = sys.argv[1] if len(sys.argv) > 1 else ""
    if target:
        with ib.Client(target, device="nic0") as client:
            with client.buffer(8192, placement="contiguous") as buf, \\
                    client.map(buf, direction="to_device") as m:
                t = client.translate(m.dma_addr, 4096, "read")
                w = client.translate(m.dma_addr, 4096, ib.AccessKind.WRITE)
                out["placement"] = repr(buf.placement)
                out["read"] = [t.faulted, t.pages[0].phys_addr == buf.runs[0].phys_addr]
                out["write_fault"] = [w.faulted, repr(w.fault_type)]
            with client.watch_faults(after_seq=w.fault_seq - 1) as watch:
                record = next(iter(watch)).records[0]
            out["record"] = [repr(record.type), repr(record.access), record.device]
    print(json.dumps(out))
""")


def clean_env(**extra):
    """The environment without PYTHONPATH, pip's settings and the like, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env.update(extra)
    return env


def run(*args, env=None, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env=env if env is not None else clean_env(), **kwargs)


class InstallTest(unittest.TestCase):
    daemon = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix="iommu-py-install-"))
        cls.elsewhere = cls.tmp / "elsewhere"  # the cwd: in no tree of the project
        cls.elsewhere.mkdir()
        if have_iommud():
            cls.daemon = Iommud("--auth=none")

    @classmethod
    def tearDownClass(cls):
        if cls.daemon is not None:
            cls.daemon.stop()
            cls.daemon.cleanup()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def venv(self, name, system_site_packages=True):
        path = self.tmp / name
        args = [sys.executable, "-m", "venv", str(path)]
        if system_site_packages:
            args.insert(3, "--system-site-packages")
        result = run(*args)
        self.assertEqual(result.returncode, 0, result.stderr)
        return path / "bin" / "python"

    def pip(self, python, *args):
        """pip offline, ignoring any pip configuration of the machine."""
        result = run(str(python), "-m", "pip", *args[:1], "--isolated", "--no-index",
                     *args[1:], cwd=self.elsewhere)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def pip_install(self, python, source):
        self.pip(python, "install", "--no-build-isolation", str(source))

    def use(self, python):
        target = [self.daemon.unix_target] if self.daemon is not None else []
        result = run(str(python), "-c", USE, *target, cwd=self.elsewhere)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return json.loads(result.stdout)

    def check_installed(self, python, venv_name):
        out = self.use(python)
        self.assertTrue(out["file"].startswith(str(self.tmp / venv_name)), out["file"])
        self.assertEqual((out["version"], out["dist_version"]), (VERSION, VERSION))
        self.assertEqual(sorted(re.match(r"[\w.-]+", r).group(0) for r in out["requires"]),
                         ["grpcio", "protobuf"])
        self.assertTrue(out["py_typed"])
        self.assertIn("dma_pb2.pyi", out["stubs"])
        self.assertIn("dma_pb2_grpc.pyi", out["stubs"])
        if self.daemon is None:
            print(f"\n  {venv_name}: iommud not built: installed and imported, not used with it",
                  file=sys.stderr)
            return
        self.assertEqual(out["placement"], "<Placement.CONTIGUOUS: 2>")
        self.assertEqual(out["read"], [False, True])
        self.assertEqual(out["write_fault"], [True, "<FaultType.PERMISSION: 2>"])
        self.assertEqual(out["record"], ["<FaultType.PERMISSION: 2>", "<AccessKind.WRITE: 2>",
                                         "nic0"])

    def laid_out_copy(self, name):
        """A copy of the build tree's package: pip builds in the tree it is
        given, and the build dir is CMake's."""
        tree = self.tmp / name
        shutil.copytree(PACKAGE, tree, ignore=shutil.ignore_patterns(
            "CMakeFiles", "*.cmake", "__pycache__", "build", "*.egg-info", ".mypy_cache"))
        return tree

    def test_install_from_the_build_tree(self):
        python = self.venv("venv-build-tree")
        self.pip_install(python, self.laid_out_copy("laid-out"))
        self.check_installed(python, "venv-build-tree")

    def test_install_from_a_source_checkout(self):
        checkout = self.tmp / "checkout"
        (checkout / "client").mkdir(parents=True)
        shutil.copy(SOURCE_ROOT / "CMakeLists.txt", checkout)
        shutil.copytree(SOURCE_ROOT / "proto", checkout / "proto")
        shutil.copytree(SOURCE_ROOT / "client" / "python", checkout / "client" / "python",
                        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
        python = self.venv("venv-checkout")
        self.pip_install(python, checkout / "client" / "python")
        self.check_installed(python, "venv-checkout")

    def test_a_missing_grpc_module_names_its_debian_package(self):
        # A wheel built where the build tools are, installed where grpc is not.
        builder = self.venv("venv-wheel")
        wheels = self.tmp / "wheels"
        self.pip(builder, "wheel", "--no-build-isolation", "--no-deps", "--wheel-dir",
                 str(wheels), str(self.laid_out_copy("laid-out-wheel")))
        (wheel,) = wheels.glob("iommu_broker-*.whl")
        python = self.venv("venv-bare", system_site_packages=False)
        self.pip(python, "install", "--no-deps", str(wheel))
        result = run(str(python), "-c", "import iommu_broker", cwd=self.elsewhere)
        self.assertNotEqual(result.returncode, 0)
        last = result.stderr.strip().splitlines()[-1]
        self.assertTrue(last.startswith("ModuleNotFoundError: iommu_broker needs the grpc module "
                                        "(grpcio)"), last)
        self.assertIn("apt-get install python3-grpcio", last)
        self.assertNotIn("generated", last)

    def test_a_missing_protobuf_module_names_its_debian_package(self):
        hide = "import sys; sys.modules['google.protobuf'] = None; import iommu_broker"
        result = run(sys.executable, "-c", hide, cwd=self.elsewhere,
                     env=clean_env(PYTHONPATH=str(PACKAGE)))
        self.assertNotEqual(result.returncode, 0)
        last = result.stderr.strip().splitlines()[-1]
        self.assertTrue(last.startswith("ModuleNotFoundError: iommu_broker needs the "
                                        "google.protobuf module (protobuf)"), last)
        self.assertIn("apt-get install python3-protobuf", last)

    def test_the_source_directory_says_to_build_the_generated_modules(self):
        result = run(sys.executable, "-c", "import iommu_broker", cwd=self.elsewhere,
                     env=clean_env(PYTHONPATH=str(SOURCE_ROOT / "client" / "python")))
        self.assertNotEqual(result.returncode, 0)
        last = result.stderr.strip().splitlines()[-1]
        self.assertIn("its generated protobuf modules (iommu_broker._generated) are missing", last)
        self.assertIn("cmake --build build --target iommu_python", last)
        self.assertNotIn("python3-grpcio", last)


if __name__ == "__main__":
    unittest.main(verbosity=2)
