# SPDX-License-Identifier: Apache-2.0
"""What the install and package tests share: the project's version, the build
tree's paths (from ctest's environment), subprocesses with their output on
failure, and a daemon started from an installed iommud."""
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time

SOURCE_DIR = pathlib.Path(os.environ["IOMMU_SOURCE_DIR"])
BUILD_DIR = pathlib.Path(os.environ["IOMMU_BUILD_DIR"])
CMAKE = os.environ.get("CMAKE_COMMAND", "cmake")
CPACK = os.environ.get("CPACK_COMMAND", "cpack")
CXX = os.environ.get("CXX_COMPILER", "c++")
LIBDIR = os.environ.get("IOMMU_INSTALL_LIBDIR", "lib")  # GNUInstallDirs' for the build's prefix


def project_version() -> str:
    """The one version string: project(iommu_broker VERSION x.y.z)."""
    text = (SOURCE_DIR / "CMakeLists.txt").read_text()
    return re.search(r"project\(\s*iommu_broker\s+VERSION\s+([0-9]+\.[0-9]+\.[0-9]+)",
                     text).group(1)


def clean_env(**extra):
    """The environment without what would make a build find the source or
    build tree (CMAKE_PREFIX_PATH, PKG_CONFIG_PATH, PYTHONPATH...), plus `extra`."""
    drop = ("CMAKE_", "PKG_CONFIG", "PYTHON", "PIP_", "CPATH", "LIBRARY_PATH", "CPLUS_INCLUDE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


def run(*args, check=True, timeout=300, **kwargs):
    kwargs.setdefault("env", clean_env())
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                       **kwargs)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(str(a) for a in args)} exited {r.returncode}:\n"
                             f"{r.stdout}\n{r.stderr}")
    return r


class Daemon:
    """An iommud (the given binary) on a private Unix socket, no TCP, no
    metrics, a state store of its own; ready once `iommuctl health` says so.
    `leading` flags come first, so these override them."""

    def __init__(self, iommud, iommuctl, *flags, leading=()):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="iommud-install-"))
        self.target = f"unix:{self.dir}/iommud.sock"
        self.log_path = self.dir / "iommud.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(iommud), *leading, f"--listen={self.target}", "--metrics_listen=", "--auth=none",
             f"--state_dir={self.dir}/state", *flags],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"iommud exited with {self.proc.returncode}:\n{self.log()}")
            if (self.dir / "iommud.sock").exists() and run(
                    iommuctl, f"--target={self.target}", "--deadline_ms=1000", "health",
                    check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"iommud not healthy after 30 s:\n{self.log()}")
            time.sleep(0.1)

    def log(self):
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        """SIGTERM; returns the exit code (0: drained)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)
