# SPDX-License-Identifier: Apache-2.0
"""Builds the iommu-broker Python package; pyproject.toml holds its metadata.

From one of two trees:
- a source checkout (client/python, with ../../proto and ../../CMakeLists.txt):
  build_py generates the iommu.v1 modules with Debian's protoc,
  grpc_python_plugin and mypy-protobuf (gen_protos.py), and the version is
  the project's (`project(iommu_broker VERSION x.y.z)`); an sdist made here
  carries what was generated, so it builds anywhere;
- a laid-out package (build/client/python after the CMake target
  iommu_python, or that sdist): iommu_broker/_generated and _version.py
  exist and are packaged as they are.
Not for editable installs: the generated modules live only in the build.
"""
import os
import pathlib
import re
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = pathlib.Path(__file__).resolve().parent
PACKAGE = HERE / "iommu_broker"
LAID_OUT = (PACKAGE / "_generated").is_dir()
REPO = HERE.parent.parent

# (tool, environment variable that overrides it, Debian package with it)
_TOOLS = {"protoc": ("PROTOC", "protobuf-compiler"),
          "grpc_python_plugin": ("GRPC_PYTHON_PLUGIN", "protobuf-compiler-grpc"),
          "protoc-gen-mypy": ("PROTOC_GEN_MYPY", "mypy-protobuf"),
          "protoc-gen-mypy_grpc": ("PROTOC_GEN_MYPY_GRPC", "mypy-protobuf")}


def _tool(name: str) -> str:
    variable, debian = _TOOLS[name]
    path = os.environ.get(variable) or shutil.which(name)
    if not path:
        raise SystemExit(f"iommu-broker: {name} not found: apt-get install {debian} "
                         f"(or set {variable})")
    return path


def _version() -> str:
    if LAID_OUT:
        match = re.search(r'__version__ = "([^"]+)"', (PACKAGE / "_version.py").read_text())
        if not match:
            raise SystemExit(f"iommu-broker: no __version__ in {PACKAGE / '_version.py'}")
        return match.group(1)
    sys.path.insert(0, str(HERE))
    import gen_protos
    return gen_protos.project_version(REPO / "CMakeLists.txt")


def _generate(out_dir: pathlib.Path) -> None:
    """Lays the whole package (sources and generated modules) out in out_dir."""
    proto_root = REPO / "proto"
    protos = sorted(p.relative_to(proto_root).as_posix()
                    for p in (proto_root / "iommu" / "v1").glob("*.proto"))
    if not protos:
        raise SystemExit(f"iommu-broker: no protos in {proto_root / 'iommu' / 'v1'}: build "
                         "from a source checkout of iommu-broker, or from a laid-out package")
    sys.path.insert(0, str(HERE))
    import gen_protos
    gen_protos.generate(protoc=_tool("protoc"), grpc_plugin=_tool("grpc_python_plugin"),
                        mypy_plugin=_tool("protoc-gen-mypy"),
                        mypy_grpc_plugin=_tool("protoc-gen-mypy_grpc"),
                        proto_root=proto_root, protos=protos, package_src=PACKAGE,
                        out_dir=out_dir, version=_version())


class BuildPy(build_py):
    """build_py, plus the generated modules."""

    def run(self) -> None:
        super().run()
        out_dir = pathlib.Path(self.build_lib)
        if LAID_OUT:
            shutil.copytree(PACKAGE / "_generated", out_dir / "iommu_broker" / "_generated",
                            dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            _generate(out_dir)


class Sdist(sdist):
    """sdist of a laid-out package, so it builds without the checkout."""

    def make_release_tree(self, base_dir: str, files: list) -> None:
        super().make_release_tree(base_dir, files)
        if not LAID_OUT:
            _generate(pathlib.Path(base_dir))


setup(version=_version(), cmdclass={"build_py": BuildPy, "sdist": Sdist})
