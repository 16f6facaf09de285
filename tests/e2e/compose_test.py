"""End-to-end test of the docker-compose demo (`make e2e`).

Starts a Docker engine if none answers (and stops it again), makes the
debian:bookworm-slim base image from Debian's archive with debootstrap when
the engine has none (no registry is needed), builds the images, brings the
demo up under a project name of its own with free loopback ports, waits for
health, and asserts against the stack's real Prometheus:

  * every PromQL expression of the Grafana dashboard returns data;
  * every recording rule and the series of every alert rule returns data;
  * the fault alert fires from the untrusted device's faults;
  * iommuctl in a container maps and unmaps over the compose network;
  * `docker-compose down -v` leaves no container, network or volume behind.

The stack is torn down even when a step fails.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import deploy_files as df

PROJECT = f"iommu-e2e-{os.getpid()}"
BASE_IMAGE = "debian:bookworm-slim"
IMAGES = {
    "iommu-broker/iommud:latest": ["-f", "deploy/Dockerfile", "--target", "iommud", "."],
    "iommu-broker/iommuctl:latest": ["-f", "deploy/Dockerfile", "--target", "iommuctl", "."],
    "iommu-broker/prometheus:latest": ["deploy/prometheus"],
}
SETTLE_TIMEOUT_S = 180
DATA_TIMEOUT_S = 150
ALERT_TIMEOUT_S = 150


def log(msg):
    print(f"e2e: {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, capture=True, env=None, timeout=None):
    r = subprocess.run(cmd, cwd=df.ROOT, text=True, capture_output=capture, env=env, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engine:
    """A Docker engine: the running one, or one started here (vfs storage)."""

    def __init__(self):
        self.proc = None
        self.log = None

    def up(self):
        if run(["docker", "info"], check=False).returncode == 0:
            return
        log("no Docker engine answers; starting dockerd --storage-driver=vfs")
        self.log = tempfile.NamedTemporaryFile(prefix="dockerd.", suffix=".log", delete=False)
        self.proc = subprocess.Popen(["dockerd", "--storage-driver=vfs"], stdout=self.log, stderr=self.log)
        deadline = time.time() + 60
        while run(["docker", "info"], check=False).returncode != 0:
            if self.proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"dockerd did not start; see {self.log.name}")
            time.sleep(0.5)

    def down(self):
        if self.proc is None:
            return
        log("stopping the Docker engine this test started")
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def base_image_usable():
    """The base image exists and an unprivileged user can traverse its root
    (an image imported from a 0700 directory cannot run the images' non-root
    users)."""
    if run(["docker", "image", "inspect", BASE_IMAGE], check=False).returncode != 0:
        return False
    probe = run(["docker", "run", "--rm", "--network", "none", "--user", "65534:65534", BASE_IMAGE,
                 "/bin/ls", "/usr/bin"], check=False)
    return probe.returncode == 0


def ensure_base_image():
    if base_image_usable():
        return
    run(["docker", "image", "rm", "-f", BASE_IMAGE], check=False)
    log(f"making {BASE_IMAGE} with debootstrap (minbase bookworm)")
    root = tempfile.mkdtemp(prefix="bookworm-rootfs.")
    try:
        run(["debootstrap", "--variant=minbase", "bookworm", root])
        os.chmod(root, 0o755)  # mkdtemp's 0700 would become the image's root
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True,
                                  text=True)
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise AssertionError(f"docker import failed: {imported.stderr}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def build_images():
    env = dict(os.environ, DOCKER_BUILDKIT="0")  # the classic builder needs no frontend image
    for tag, args in IMAGES.items():
        log(f"building {tag}")
        start = time.time()
        run(["docker", "build", "--network", "host", "-q", "-t", tag] + args, env=env)
        log(f"built {tag} in {time.time() - start:.0f}s")


class Stack:
    def __init__(self):
        self.env = dict(os.environ,
                        IOMMU_DEMO_GRPC_PORT=str(free_port()), IOMMU_DEMO_METRICS_PORT=str(free_port()),
                        IOMMU_DEMO_PROMETHEUS_PORT=str(free_port()), IOMMU_DEMO_GRAFANA_PORT=str(free_port()))
        self.prometheus = f"http://127.0.0.1:{self.env['IOMMU_DEMO_PROMETHEUS_PORT']}"
        self.network = f"{PROJECT}_default"

    def compose(self, *args, check=True, timeout=600):
        return run(["docker-compose", "-p", PROJECT, "-f", df.COMPOSE] + list(args), check=check, env=self.env,
                   timeout=timeout)

    def up(self):
        self.compose("up", "-d", "--no-build")

    def leftovers(self):
        label = f"label=com.docker.compose.project={PROJECT}"
        return {
            "containers": run(["docker", "ps", "-aq", "--filter", label]).stdout.split(),
            "networks": run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
            "volumes": run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split(),
        }

    def down(self):
        return self.compose("down", "-v", "--remove-orphans", check=False)

    def dump_logs(self):
        r = self.compose("logs", "--no-color", "--tail=40", check=False)
        log("compose logs (tail):\n" + r.stdout + r.stderr)

    def container_states(self):
        ids = self.compose("ps", "-q").stdout.split()
        states = {}
        for cid in ids:
            info = json.loads(run(["docker", "inspect", cid]).stdout)[0]
            name = info["Config"]["Labels"]["com.docker.compose.service"]
            health = info["State"].get("Health", {}).get("Status")
            states[name] = (info["State"]["Status"], health)
        return states

    def query(self, expr):
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        if body["status"] != "success":
            raise AssertionError(f"query {expr!r}: {body}")
        return body["data"]["result"]

    def alerts(self):
        with urllib.request.urlopen(f"{self.prometheus}/api/v1/alerts", timeout=10) as r:
            return json.load(r)["data"]["alerts"]


ENGINE = Engine()
STACK = None


def setUpModule():
    global STACK
    ENGINE.up()
    try:
        ensure_base_image()
        build_images()
        STACK = Stack()
        log(f"docker-compose up ({PROJECT})")
        STACK.up()
    except BaseException:
        if STACK is not None:
            STACK.down()
        ENGINE.down()
        raise


def tearDownModule():
    if STACK is not None:
        STACK.down()  # idempotent: the last test has already taken the stack down
    ENGINE.down()


def eventually(what, timeout_s, probe):
    """Retries probe() (returning (ok, detail)) until ok or the deadline."""
    deadline = time.time() + timeout_s
    while True:
        ok, detail = probe()
        if ok:
            return detail
        if time.time() > deadline:
            raise AssertionError(f"{what}: not after {timeout_s}s: {detail}")
        time.sleep(2)


class ComposeDemoTest(unittest.TestCase):
    """Ordered steps against one stack (unittest runs them by name)."""

    def test_1_stack_settles_healthy(self):
        want = {"iommud", "nic", "nvme", "gpu", "camera", "untrusted", "prometheus"}

        def probe():
            states = STACK.container_states()
            ok = set(states) == want and all(s == "running" and h in (None, "healthy") for s, h in states.values())
            return ok, states

        try:
            states = eventually("every service running and healthy", SETTLE_TIMEOUT_S, probe)
        except AssertionError:
            STACK.dump_logs()
            raise
        self.assertEqual(states["iommud"], ("running", "healthy"))
        self.assertEqual(states["prometheus"], ("running", "healthy"))

    def test_2_every_dashboard_query_returns_data(self):
        self._all_return_data("dashboard", df.dashboard_queries())

    def test_3_every_rule_returns_data(self):
        queries = []
        for rule in df.rules():
            if "record" in rule:
                queries.append((rule["record"], rule["record"]))
            else:
                series = df.alert_series(rule["expr"])
                self.assertIsNotNone(series, rule["alert"])
                queries.append((rule["alert"], series))
        self.assertGreaterEqual(len(queries), 20)
        self._all_return_data("rules", queries)

    def test_4_fault_alert_fires_from_untrusted_device(self):
        def probe():
            firing = [a for a in STACK.alerts() if a["labels"]["alertname"] == "IommuDeviceFaults"]
            return any(a["state"] == "firing" for a in firing), firing

        alerts = eventually("IommuDeviceFaults firing", ALERT_TIMEOUT_S, probe)
        self.assertEqual(alerts[0]["labels"]["severity"], "warning")
        # The faults come from tbt0's domain: its translations fault, the
        # trusted devices' never do.
        by_type = {r["metric"]["type"]: float(r["value"][1]) for r in STACK.query("type:iommu_faults:rate1m")}
        self.assertGreater(by_type["translation"] + by_type["permission"], 0)
        self.assertEqual(STACK.query('up{job="iommud"} == 0'), [])

    def test_5_iommuctl_in_a_container_maps_and_unmaps(self):
        def ctl(*args):
            r = run(["docker", "run", "--rm", "--network", STACK.network, "iommu-broker/iommuctl:latest",
                     "--target=iommud:50051", "--device=sata0", "--json"] + list(args))
            return json.loads(r.stdout.strip().splitlines()[-1])

        buffer = ctl("alloc-buffer", "--size=64K", "--placement=contiguous")
        buffer_id = buffer["buffer"]["buffer_id"]
        phys = int(buffer["buffer"]["runs"][0]["phys_addr"])
        mapped = ctl("map", f"--buffer={buffer_id}", "--offset=4K", "--length=8K", "--direction=to_device")
        dma_addr = int(mapped["dma_addr"])
        self.assertNotEqual(dma_addr, 0)
        self.assertEqual(dma_addr % 4096, 0)
        walk = ctl("translate", f"--iova={dma_addr}", "--length=8K", "--access=read")
        self.assertFalse(walk.get("faulted", False), walk)
        self.assertEqual([int(p["phys_addr"]) for p in walk["pages"]], [phys + 4096, phys + 8192])
        ctl("unmap", f"--dma_addr={dma_addr}")
        ctl("free-buffer", f"--buffer={buffer_id}")
        # The buffer is gone: the daemon says so with NOT_FOUND (exit code 5).
        r = run(["docker", "run", "--rm", "--network", STACK.network, "iommu-broker/iommuctl:latest",
                 "--target=iommud:50051", "--device=sata0", "get-buffer", f"--buffer={buffer_id}"], check=False)
        self.assertEqual(r.returncode, 5, r.stdout + r.stderr)

    def test_9_down_leaves_nothing_behind(self):
        self.assertTrue(any(STACK.leftovers().values()))
        r = STACK.down()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(STACK.leftovers(), {"containers": [], "networks": [], "volumes": []})

    def _all_return_data(self, what, queries):
        pending = dict((f"{name}: {expr}", expr) for name, expr in queries)
        self.assertTrue(pending)

        def probe():
            for key, expr in list(pending.items()):
                if STACK.query(expr):
                    del pending[key]
            return not pending, sorted(pending)

        eventually(f"every {what} query returns data", DATA_TIMEOUT_S, probe)


if __name__ == "__main__":
    unittest.main(verbosity=2, failfast=True)
