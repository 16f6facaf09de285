# SPDX-License-Identifier: Apache-2.0
"""Starts and stops the real iommud for the Python SDK's tests.

The binary comes from $IOMMUD (ctest sets it to the built target). When the
daemon target does not exist yet the tests skip: run them through
`run_tests()`, which exits with 77 (ctest's SKIP_RETURN_CODE) in that case.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import grpc

IOMMUD = os.environ.get("IOMMUD", "")


def have_iommud() -> bool:
    return bool(IOMMUD) and os.access(IOMMUD, os.X_OK)


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Iommud:
    """One iommud process on a private Unix socket and a TCP port.

    `unix_target` / `tcp_target` are gRPC targets; `stop()` sends SIGTERM and
    returns the exit code (a clean drain exits 0); `kill()` then `restart()`
    is a crash and restart on the same socket and state directory."""

    def __init__(self, *extra_flags, tls_server_name=None, channel_credentials=None):
        self.dir = tempfile.mkdtemp(prefix="iommud-py-")
        self.unix_target = f"unix:{self.dir}/iommud.sock"
        self.tcp_port = free_tcp_port()
        self.tcp_target = f"127.0.0.1:{self.tcp_port}"
        self.metrics_port = free_tcp_port()
        self.log_path = os.path.join(self.dir, "iommud.log")
        self._log = open(self.log_path, "wb")
        self.args = [IOMMUD, f"--listen={self.unix_target},{self.tcp_target}",
                     f"--metrics_listen=127.0.0.1:{self.metrics_port}",
                     # A state store of its own (never the system's).
                     "--state_dir=" + os.path.join(self.dir, "state"), *extra_flags]
        self._credentials = channel_credentials
        self._server_name = tls_server_name
        self.restart()

    def restart(self):
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready(self._credentials, self._server_name)

    def kill(self):
        """SIGKILL, as a crash."""
        self.proc.kill()
        self.proc.wait()

    def _wait_ready(self, credentials, server_name, timeout_s=30.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"iommud exited with {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.unix_target[len("unix:"):]):
                if credentials is None:
                    channel = grpc.insecure_channel(self.unix_target)
                else:
                    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
                    channel = grpc.secure_channel(self.unix_target, credentials, options=options)
                try:
                    grpc.channel_ready_future(channel).result(timeout=1.0)
                    return
                except grpc.FutureTimeoutError:
                    pass
                finally:
                    channel.close()
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"iommud not ready after {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self, timeout_s=30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class DaemonTestCase(unittest.TestCase):
    """A test class sharing one iommud started with FLAGS."""

    FLAGS = ("--auth=none",)
    daemon = None

    @classmethod
    def setUpClass(cls):
        if not have_iommud():
            raise unittest.SkipTest("iommud not built (IOMMUD unset or not executable)")
        cls.daemon = Iommud(*cls.FLAGS, **cls.daemon_kwargs())

    @classmethod
    def daemon_kwargs(cls):
        return {}

    @classmethod
    def tearDownClass(cls):
        if cls.daemon is not None:
            code = cls.daemon.stop()
            log = cls.daemon.log() if code != 0 else ""
            cls.daemon.cleanup()
            if code != 0:
                raise AssertionError(f"iommud exited with {code} on SIGTERM:\n{log}")


def run_tests():
    """unittest.main, but exit 77 (skipped) when there is no daemon to test."""
    if not have_iommud():
        print("SKIP: iommud not built (IOMMUD unset or not executable)")
        sys.exit(77)
    unittest.main(verbosity=2)
