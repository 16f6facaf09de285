# SPDX-License-Identifier: Apache-2.0
"""End-to-end test of the docker-compose demo (`make e2e`).

Starts a Docker engine if none answers (and stops it again), makes the
debian:bookworm-slim base image from Debian's archive with debootstrap when
the engine has none (no registry is needed), builds the images, brings the
demo up under a project name of its own with free loopback ports, waits for
health, and asserts against the stack's real Prometheus:

  * every PromQL expression of the Grafana dashboard returns data;
  * every recording rule and the series of every alert rule returns data;
  * the fault alert fires from the untrusted device's faults, naming it;
  * iommuctl in a container maps and unmaps over the compose network;
  * iommud's state survives a restart and a SIGKILL in the middle of the
    devices' traffic: buffers, domains and mappings made through iommuctl
    come back with the same ids, pages and page tables, the devices' own
    sessions and buffers too, and their traffic resumes without their
    containers restarting;
  * `docker-compose down -v` leaves no container, network or volume behind.

The stack is torn down even when a step fails.
"""

import json
import math
import os
import re
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
SETTLE_TIMEOUT_S = 180
DATA_TIMEOUT_S = 150
ALERT_TIMEOUT_S = 150
RESTART_TIMEOUT_S = 90
RESUME_TIMEOUT_S = 60
# The simulated devices (compose services) and the device each drives.
SIMULATORS = {"nic": "nic0", "nvme": "nvme0", "gpu": "gpu0", "camera": "cam0", "untrusted": "tbt0"}


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
    for name, args in df.IMAGES.items():
        tags = df.image_tags(name)
        log(f"building {' '.join(tags)}")
        start = time.time()
        tag_args = [a for t in tags for a in ("-t", t)]
        run(["docker", "build", "--network", "host", "-q"] + tag_args + args, env=env)
        log(f"built {name} in {time.time() - start:.0f}s")


class Stack:
    def __init__(self):
        self.env = dict(os.environ,
                        IOMMU_DEMO_GRPC_PORT=str(free_port()), IOMMU_DEMO_METRICS_PORT=str(free_port()),
                        IOMMU_DEMO_PROMETHEUS_PORT=str(free_port()), IOMMU_DEMO_GRAFANA_PORT=str(free_port()))
        self.prometheus = f"http://127.0.0.1:{self.env['IOMMU_DEMO_PROMETHEUS_PORT']}"
        self.metrics = f"http://127.0.0.1:{self.env['IOMMU_DEMO_METRICS_PORT']}/metrics"
        self.network = f"{PROJECT}_default"
        self.tool = None  # an iommuctl container on the compose network, for docker exec

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
        if self.tool is not None:
            run(["docker", "rm", "-f", self.tool], check=False)
            self.tool = None
        return self.compose("down", "-v", "--remove-orphans", check=False)

    def container(self, service):
        """The container of a service: its id and `docker inspect` state."""
        cid = self.compose("ps", "-q", service).stdout.strip()
        return cid, json.loads(run(["docker", "inspect", cid]).stdout)[0]["State"]

    def ctl(self, *args, device=None, check=True):
        """iommuctl --json against iommud over the compose network (as `device`,
        else as the admin); the last output line, parsed."""
        if self.tool is None:
            self.tool = f"{PROJECT}-ctl"
            run(["docker", "run", "-d", "--rm", "--name", self.tool, "--network", self.network,
                 "--entrypoint", "sleep", "iommu-broker/iommuctl:latest", "infinity"])
        cmd = ["docker", "exec", self.tool, "iommuctl", "--target=iommud:50051", "--json"]
        if device is not None:
            cmd.append(f"--device={device}")
        r = run(cmd + list(args), check=check)
        lines = r.stdout.strip().splitlines()
        return json.loads(lines[-1]) if r.returncode == 0 and lines else None

    def daemon_metrics(self):
        """iommud's /metrics through the published port: {(name, labels): value}."""
        with urllib.request.urlopen(self.metrics, timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$", line)
            if m:
                out[(m.group(1), m.group(2) or "")] = float(m.group(3))
        return out

    def logs(self, service, since=None):
        cid, _ = self.container(service)
        cmd = ["docker", "logs"] + (["--since", str(math.floor(since))] if since is not None else []) + [cid]
        r = run(cmd)
        return r.stdout + r.stderr

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
        # The alert names the device and the broker: tbt0 faults, the trusted
        # devices never do.
        firing = [a["labels"] for a in alerts if a["state"] == "firing"]
        self.assertEqual({(a.get("device"), a["instance"]) for a in firing}, {("tbt0", "iommud:9477")})
        by_type = {r["metric"]["type"]: float(r["value"][1])
                   for r in STACK.query("instance_type:iommu_faults:rate1m")}
        self.assertGreater(by_type["translation"] + by_type["permission"], 0)
        by_device = {r["metric"].get("device"): float(r["value"][1])
                     for r in STACK.query("instance_device:iommu_faults:rate1m > 0")}
        self.assertEqual(set(by_device), {"tbt0"})
        self.assertEqual(STACK.query('up{job="iommud"} == 0'), [])
        # Some broker is scraped: the alert on none stays quiet.
        self.assertFalse([a for a in STACK.alerts() if a["labels"]["alertname"] == "IommudTargetsMissing"])

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

    def test_6_state_survives_iommud_restart_and_kill(self):
        """While the devices' traffic runs: state made through iommuctl on
        devices no simulator uses (dsp0 in its default domain, vf0 in a
        domain of its own), recorded with the simulators' invariant state,
        is the same after `docker-compose restart iommud` and after a
        SIGKILL; each time iommud logs a restore of an existing store and
        every device's traffic resumes in the same simulator process."""
        start = time.time()
        made = self._make_invariant_state()
        before = self._snapshot(made)
        self.assertEqual(len(before["buffers"]), 3)
        self.assertEqual(before["devices"]["dsp0"]["mappings"], "2")
        self.assertEqual(before["devices"]["vf0"]["mappings"], "1")
        simulators = {svc: STACK.container(svc)[1]["StartedAt"] for svc in SIMULATORS}
        log(f"recorded: {len(before['domains'])} domains, devices "
            f"{ {d: (v['current_domain_id'], v['buffers']) for d, v in before['devices'].items()} }, "
            f"mappings per domain {before['domain_mappings']}")

        def graceful():
            STACK.compose("restart", "iommud")

        def killed():
            cid, _ = STACK.container("iommud")
            run(["docker", "kill", "-s", "KILL", cid])
            STACK.compose("up", "-d", "--no-build", "iommud")

        for restarts, (how, restart) in enumerate([("restart", graceful), ("SIGKILL", killed)], start=1):
            t0 = time.time()
            _, state = STACK.container("iommud")
            restart()
            restored = self._await_restored(state["StartedAt"], restarts)
            # A second of traffic printed after this began after the restart.
            healthy = math.ceil(time.time())
            log(f"{how}: healthy again after {time.time() - t0:.1f}s; {restored.strip()}")
            after = self._snapshot(made)
            for key in before:
                self.assertEqual(after[key], before[key], f"after {how}: {key}")
            m = STACK.daemon_metrics()
            self.assertGreaterEqual(m[("iommu_store_recovered_mappings", "")], 3, how)
            self.assertGreater(m[("iommu_store_recovered_records", "")], 0, how)
            self._await_traffic_resumed(healthy, how)
            log(f"{how}: every device's traffic resumed {time.time() - t0:.1f}s after the restart began")
        # The simulators never restarted: their sessions, buffers and domains
        # were restored, not made again.
        for svc, started in simulators.items():
            cid, state = STACK.container(svc)
            self.assertEqual((state["Status"], state["StartedAt"]), ("running", started), svc)
            self.assertEqual(json.loads(run(["docker", "inspect", cid]).stdout)[0]["RestartCount"], 0, svc)
        self.assertNotIn("sessions_expired", STACK.logs("iommud", since=start))

        # Prometheus scrapes the process started by the last restart.
        def prometheus_scrapes_again():
            started = STACK.query('process_start_time_seconds{job="iommud"}')
            return bool(started) and float(started[0]["value"][1]) >= math.floor(t0), started

        eventually("Prometheus scrapes the restarted iommud", DATA_TIMEOUT_S, prometheus_scrapes_again)
        self.assertEqual(STACK.query('up{job="iommud"} == 0'), [])
        # Everything made here is released again.
        ctl = STACK.ctl
        for dev, dma_addr, cmd, _ in made["mappings"]:
            ctl("unmap-sg" if cmd == "map-sg" else "unmap", f"--dma_addr={dma_addr}", device=dev)
        ctl("detach", device="vf0")
        ctl("destroy-domain", f"--domain={made['vf0_domain']}", device="vf0")
        for dev, buffer_id in made["buffers"]:
            ctl("free-buffer", f"--buffer={buffer_id}", device=dev)
        log(f"restart phase took {time.time() - start:.0f}s")

    def _make_invariant_state(self):
        """Buffers, a domain and mappings on dsp0 and vf0 (no simulator uses
        them, so nothing else changes them)."""
        ctl = STACK.ctl
        made = {"buffers": [], "mappings": []}

        def buffer(dev, size, placement):
            b = ctl("alloc-buffer", f"--size={size}", f"--placement={placement}", device=dev)["buffer"]
            made["buffers"].append((dev, b["buffer_id"]))
            return b["buffer_id"]

        a = buffer("dsp0", "64K", "contiguous")
        b = buffer("dsp0", "128K", "scattered")
        mapped = ctl("map", f"--buffer={a}", "--offset=4K", "--length=8K", "--direction=to_device",
                     device="dsp0")
        made["mappings"].append(("dsp0", mapped["dma_addr"], "map", "read"))
        # Page-sized entries: each must be physically contiguous, and the
        # buffer's pages are scattered.
        mapped = ctl("map-sg", f"--segments={b}:0:4096,{b}:4096:4096,{b}:65536:4096", "--mode=merge",
                     "--direction=from_device", device="dsp0")
        made["mappings"].append(("dsp0", mapped["iova"], "map-sg", "write"))
        domain = ctl("create-domain", "--smmu=smmu2", "--type=dma", device="vf0")["domain"]["domain_id"]
        made["vf0_domain"] = domain
        ctl("attach", f"--domain={domain}", device="vf0")
        c = buffer("vf0", "64K", "scattered")
        mapped = ctl("map", f"--buffer={c}", "--offset=0", "--length=64K", "--direction=bidirectional",
                     device="vf0")
        made["mappings"].append(("vf0", mapped["dma_addr"], "map", "read"))
        return made

    def _snapshot(self, made):
        """What the daemon holds that the traffic does not change."""
        ctl = STACK.ctl
        devices = {d["config"]["name"]: d for d in ctl("list-devices")["devices"]}
        domains = ctl("list-domains")["domains"]
        # Every domain as made (not its mappings, which the traffic changes;
        # nor its ASID/VMID, tags of the IOTLB, which starts empty).
        changing = {"mappings", "mapped_bytes", "asid", "vmid"}
        snap = {
            "domains": {d["domain_id"]: {k: v for k, v in d.items() if k not in changing} for d in domains},
            # The simulators' attachments and buffers (the GPU's come and go).
            "devices": {name: {k: d[k] for k in ("current_domain_id", "default_domain_id", "buffers")}
                        for name, d in devices.items() if name not in ("gpu0", "sata0")},
            "buffers": {b: ctl("get-buffer", f"--buffer={b}", device=dev)["buffer"] for dev, b in made["buffers"]},
            "walks": {},
            "translations": {},
            "domain_mappings": {d["domain_id"]: d["mappings"] for d in domains
                                if any(dev in d["devices"] for dev in ("dsp0", "vf0"))},
        }
        for name in ("dsp0", "vf0"):
            snap["devices"][name] = devices[name]
            domain = devices[name]["current_domain_id"]
            walk = ctl("walk-domain", f"--domain={domain}", "--max_leaves=4096")
            self.assertEqual(walk["next_iova"], "0", walk)
            self.assertTrue(walk["leaves"], name)
            snap["walks"][domain] = walk["leaves"]
        # Each mapping as its device would access it (a FROM_DEVICE mapping
        # is write-only).
        for dev, dma_addr, _, access in made["mappings"]:
            t = ctl("translate", f"--iova={dma_addr}", "--length=8K", f"--access={access}", device=dev)
            self.assertFalse(t.get("faulted", False), t)
            snap["translations"][dma_addr] = [(p["iova"], p["phys_addr"], p["length_bytes"]) for p in t["pages"]]
        return snap

    def _await_restored(self, started_before, restarts):
        """Waits for iommud's container to run again, healthy, and returns
        the state_restored line of the new start (fresh=false)."""
        def probe():
            _, state = STACK.container("iommud")
            health = state.get("Health", {}).get("Status")
            ok = state["Status"] == "running" and state["StartedAt"] != started_before and health == "healthy"
            return ok, (state["Status"], health)

        eventually("iommud running and healthy again", RESTART_TIMEOUT_S, probe)
        self.assertEqual(STACK.ctl("health"), {"service": "", "status": "SERVING"})
        lines = [line for line in STACK.logs("iommud").splitlines() if " state_restored " in line]
        # One per start of the container: the first on an empty volume.
        self.assertEqual(len(lines), restarts + 1, lines)
        self.assertIn("fresh=true", lines[0])
        self.assertIn("state_dir=/var/lib/iommud", lines[-1])
        self.assertIn("fresh=false", lines[-1])
        return lines[-1]

    def _await_traffic_resumed(self, since, how):
        """Every simulator prints a second of traffic with maps and no errors
        after `since`: its session and buffers are there again."""
        pending = dict(SIMULATORS)

        def probe():
            for svc in list(pending):
                for line in STACK.logs(svc, since=since).splitlines():
                    m = re.search(r"\bmaps=(\d+) .*\berrors=(\d+)", line)
                    if m and int(m.group(1)) > 0 and m.group(2) == "0":
                        del pending[svc]
                        break
            return not pending, sorted(pending)

        eventually(f"after {how}: every device's traffic resumes", RESUME_TIMEOUT_S, probe)

        # The daemon's own counters rise again: maps served since its start.
        def maps():
            m = STACK.daemon_metrics()
            return sum(v for (name, labels), v in m.items() if name == "grpc_server_handled_total"
                       and 'grpc_code="OK"' in labels
                       and re.search(r'grpc_method="(Map|MapSg|Alloc)"', labels))

        first = maps()
        eventually(f"after {how}: iommud's map counters rise", RESUME_TIMEOUT_S, lambda: (maps() > first, first))

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
