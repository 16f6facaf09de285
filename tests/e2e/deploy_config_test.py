# SPDX-License-Identifier: Apache-2.0
"""Static checks of the shipped deploy/ files (no Docker, no cluster needed):
every manifest and dashboard parses, Prometheus accepts the config and the
rules, the dashboard and the alerts are of the form the end-to-end test
relies on, the dashboard imports into any Grafana and shows any broker of a
fleet, Kubernetes runs iommud with the compose demo's flags, its tokens over
TLS and its probes on the health-only port, on every node, unprivileged,
with a socket a documented group can use and one scrape per pod, the
Prometheus Operator manifests hold the same rules and scrape the same pods,
compose forces --auth=none onto its network knowingly, and the image, compose
and Kubernetes each keep iommud's state directory on storage that outlives
the container, owned by its user. (The rules' unit tests are
prometheus_rules_test.)"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import yaml

import deploy_files as df


IOMMUD_UID = 10001
STATE_DIR = "/var/lib/iommud"  # iommud's default --state_dir
SOCKET_DIR = "/run/iommud"


def dockerfile_stages():
    """deploy/Dockerfile's stages: {name: [instruction lines]}, continuation
    lines joined."""
    with open(os.path.join(df.DEPLOY, "Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)$", line, re.I)
        if m:
            current = stages.setdefault(m.group(1), [])
        elif current is not None:
            current.append(line)
    return stages


def k8s_docs():
    """deploy/k8s/iommud.yaml: {kind: document} (Secrets: the last one)."""
    manifests = next(docs for p, docs in df.manifests() if p == df.K8S)
    return {d["kind"]: d for d in manifests}


def operator_docs():
    """deploy/k8s/prometheus-operator/*.yaml: {kind: document}."""
    out = {}
    for path, docs in df.manifests():
        if os.path.dirname(path) == df.K8S_OPERATOR:
            out.update({d["kind"]: d for d in docs})
    return out


def tmpfiles():
    """deploy/k8s/iommud-tmpfiles.conf: {path: (type, mode, user, group)}."""
    out = {}
    with open(df.K8S_TMPFILES) as f:
        for line in f:
            words = line.split("#", 1)[0].split()
            if words:
                out[words[1]] = (words[0], int(words[2], 8), words[3], words[4])
    return out


def state_dir_of(args):
    """The --state_dir an iommud command line names (its default if none)."""
    for a in args:
        if a.startswith("--state_dir="):
            return a.split("=", 1)[1]
    return STATE_DIR


class DeployConfigTest(unittest.TestCase):
    def test_every_manifest_and_dashboard_parses(self):
        found = {os.path.relpath(p, df.DEPLOY) for p, _ in df.manifests()}
        for expected in ["compose.yaml", "prometheus/prometheus.yml", "prometheus/rules/recording.yml",
                         "prometheus/rules/alerts.yml", "prometheus/tests/recording_test.yml",
                         "prometheus/tests/alerts_test.yml", "grafana/dashboards/iommu-broker.json",
                         "grafana/provisioning/datasources/prometheus.yml",
                         "grafana/provisioning/dashboards/iommu-broker.yml", "k8s/iommud.yaml",
                         "k8s/prometheus-operator/podmonitor.yaml",
                         "k8s/prometheus-operator/prometheusrule.yaml"]:
            self.assertIn(expected, found)
        for path, docs in df.manifests():
            self.assertTrue(docs and all(d is not None for d in docs), path)

    @unittest.skipUnless(shutil.which("promtool"), "promtool not installed")
    def test_promtool_accepts_config_and_rules(self):
        # The config names the rules by their in-container path: check a copy
        # that points at the shipped files.
        with open(os.path.join(df.DEPLOY, "prometheus", "prometheus.yml")) as f:
            config = f.read().replace("/etc/prometheus/rules/", df.RULES_DIR + "/")
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as tmp:
            tmp.write(config)
            tmp.flush()
            r = subprocess.run(["promtool", "check", "config", tmp.name], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("SUCCESS: 2 rule files found", r.stdout + r.stderr)
        files = [os.path.join(df.RULES_DIR, n) for n in sorted(os.listdir(df.RULES_DIR))]
        r = subprocess.run(["promtool", "check", "rules"] + files, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_alerts_cover_the_operator_cases_in_a_checkable_form(self):
        alerts = {r["alert"]: r for r in df.rules() if "alert" in r}
        self.assertEqual(set(alerts), {"IommudDown", "IommudTargetsMissing", "IommuIovaSpaceNearlyExhausted",
                                       "IommuIovaFragmentationHigh", "IommuIotlbThrashing", "IommuDeviceFaults",
                                       "IommuLazyStaleHits", "IommuRpcErrorRatioHigh", "IommuFaultRecordsDropped"})
        for name, rule in alerts.items():
            self.assertIsNotNone(df.alert_series(rule["expr"]), f"{name}: {rule['expr']}")
            self.assertIn(rule["labels"]["severity"], {"critical", "warning", "info"}, name)
            self.assertTrue(rule["annotations"]["summary"], name)
            # A fleet's alert names its broker (the absence of every broker has none to name).
            if name != "IommudTargetsMissing":
                self.assertIn("$labels.instance", rule["annotations"]["summary"], name)
        self.assertIsNone(df.alert_series("rate(x[1m])"))
        self.assertEqual(df.alert_series('up{job="a"} == 0'), 'up{job="a"}')
        self.assertEqual(df.alert_series('absent(up{job=~"a.*"})'), 'up{job=~"a.*"}')

    def test_dashboard_imports_anywhere_and_shows_any_broker_of_a_fleet(self):
        dash = df.dashboard()
        self.assertEqual(dash["uid"], "iommu-broker")
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        self.assertLessEqual({"datasource", "job", "instance", "smmu"}, set(variables), "dashboard variables")
        # A datasource variable, not a uid of one Grafana: it imports as is.
        self.assertEqual((variables["datasource"]["type"], variables["datasource"]["query"]),
                         ("datasource", "prometheus"))
        self.assertNotIn("iommu-prometheus", json.dumps(dash))
        # job and instance from iommud's own build_info, instance within job.
        query = {n: variables[n]["query"]["query"] for n in ("job", "instance", "smmu")}
        self.assertEqual(query["job"], "label_values(iommu_build_info, job)")
        self.assertEqual(query["instance"], 'label_values(iommu_build_info{job=~"$job"}, instance)')
        self.assertIn('job=~"$job", instance=~"$instance"', query["smmu"])
        for name in ("job", "instance", "smmu"):
            self.assertEqual(variables[name]["datasource"]["uid"], "${datasource}", name)
            self.assertTrue(variables[name]["includeAll"] and variables[name]["multi"], name)
        # "All" of job and instance is the list of iommud's own values (no
        # custom allValue such as .*, which would select every job's
        # process_* series).
        self.assertNotIn("allValue", variables["job"])
        self.assertNotIn("allValue", variables["instance"])
        panels = [p for p in df._panels(dash["panels"]) if p["type"] != "row"]
        for p in panels:
            self.assertEqual(p["datasource"], {"type": "prometheus", "uid": "${datasource}"}, p["title"])
            self.assertTrue(p["targets"], p["title"])
            for t in p["targets"]:
                self.assertEqual(t["datasource"], {"type": "prometheus", "uid": "${datasource}"}, p["title"])
                found = df.selectors(t["expr"])
                self.assertTrue(found, t["expr"])
                for metric, matchers in found:
                    self.assertIn('job=~"$job"', matchers, f"{p['title']}: {metric} in {t['expr']}")
                    self.assertIn('instance=~"$instance"', matchers, f"{p['title']}: {metric} in {t['expr']}")
                # Several brokers on one panel: each is told apart.
                if "sum by (le)" not in t["expr"]:
                    self.assertIn("{{instance}}", t["legendFormat"], p["title"])
        # Panels do not overlap.
        cells = set()
        for p in dash["panels"]:
            g = p["gridPos"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    self.assertNotIn((x, y), cells, p["title"])
                    cells.add((x, y))
        exprs = " ".join(e for _, e in df.dashboard_queries())
        for needle in ["iommu_iova_fragmentation", "iommu_iova_free_range_size_bytes_bucket", "iommu_iova_usage",
                       "iommu_iotlb_hit:ratio", "iommu_iotlb_misses", "iommu_iotlb_invalidations",
                       "iommu_mappings", "iommu_mapped_bytes", "instance_device:iommu_faults",
                       "instance_type:iommu_faults", "grpc_server_handled", "grpc_server_errors",
                       "grpc_server_handling_seconds"]:
            self.assertIn(needle, exprs)
        self.assertNotIn("$", exprs)  # every variable substituted
        # Every recorded series a panel reads is recorded.
        recorded = {r["record"] for r in df.rules() if "record" in r}
        for _, expr in df.dashboard_queries():
            for metric, _ in df.selectors(expr):
                if ":" in metric:
                    self.assertIn(metric, recorded, expr)
        # The demo's Grafana provisions a default Prometheus, which the
        # datasource variable picks.
        with open(os.path.join(df.DEPLOY, "grafana", "provisioning", "datasources", "prometheus.yml")) as f:
            ds = yaml.safe_load(f)["datasources"][0]
        self.assertEqual((ds["type"], ds["isDefault"]), ("prometheus", True))

    def test_kubernetes_runs_iommud_with_the_demo_flags(self):
        docs = k8s_docs()
        self.assertEqual(set(docs), {"Namespace", "Secret", "DaemonSet", "Service"})
        pod = docs["DaemonSet"]["spec"]["template"]
        args = pod["spec"]["containers"][0]["args"]
        with open(df.COMPOSE) as f:
            compose_args = yaml.safe_load(f)["services"]["iommud"]["command"]
        for flag in compose_args:
            if not flag.startswith("--auth"):
                self.assertIn(flag, args)
        self.assertIn("--auth=token", args)
        self.assertTrue(pod["spec"]["securityContext"]["runAsNonRoot"])
        self.assertEqual(pod["metadata"]["labels"], {**pod["metadata"]["labels"],
                                                     **docs["Service"]["spec"]["selector"]})

    def test_kubernetes_tokens_travel_over_tls_and_probes_use_the_health_port(self):
        manifests = next(docs for p, docs in df.manifests() if p == df.K8S)
        secrets = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "Secret"}
        pod = next(d for d in manifests if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
        container = pod["containers"][0]
        flags = dict(a.split("=", 1) for a in container["args"])
        # Token auth needs the server certificate; no flag asks for plaintext.
        self.assertEqual(flags["--auth"], "token")
        self.assertNotIn("--auth_none_allow_remote", flags)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}

        def secret_file(flag):
            """The Secret and key a file flag names, through its volume mount."""
            path = flags[flag]
            for name, mount in mounts.items():
                if path.startswith(mount.rstrip("/") + "/") and "secret" in volumes[name]:
                    secret = secrets[volumes[name]["secret"]["secretName"]]
                    return secret, path[len(mount.rstrip("/")) + 1:]
            self.fail(f"{flag}={path} is on no Secret volume")

        for flag in ("--tls_cert", "--tls_key", "--token_file"):
            secret, key = secret_file(flag)
            self.assertIn(key, secret["stringData"], flag)
        tls, _ = secret_file("--tls_cert")
        self.assertEqual(tls["type"], "kubernetes.io/tls")
        self.assertEqual(set(tls["stringData"]), {"tls.crt", "tls.key"})
        # The shipped values are examples that iommud refuses: no PEM, short tokens.
        self.assertNotIn("-----BEGIN", "".join(tls["stringData"].values()))
        tokens, key = secret_file("--token_file")
        for line in tokens["stringData"][key].splitlines():
            words = line.split("#", 1)[0].split()
            if words:
                self.assertLess(len(words[0]), 16, line)
        # Both probes ask the plaintext health-only port, not a TLS listener.
        health_port = int(flags["--health_listen"].rsplit(":", 1)[1])
        grpc_ports = {int(a.rsplit(":", 1)[1]) for a in flags["--listen"].split(",") if not a.startswith("unix:")}
        self.assertNotIn(health_port, grpc_ports)
        self.assertIn(health_port, {p["containerPort"] for p in container["ports"]})
        for probe in ("readinessProbe", "livenessProbe"):
            self.assertEqual(container[probe]["grpc"]["port"], health_port, probe)

    def test_compose_forces_auth_none_onto_its_network_knowingly(self):
        with open(df.COMPOSE) as f:
            command = yaml.safe_load(f)["services"]["iommud"]["command"]
        self.assertIn("--auth=none", command)
        listen = next(a for a in command if a.startswith("--listen="))
        self.assertIn("0.0.0.0:", listen)
        # iommud refuses --auth=none on a non-loopback address without it.
        self.assertIn("--auth_none_allow_remote", command)

    def test_compose_has_the_demo_services(self):
        with open(df.COMPOSE) as f:
            compose = yaml.safe_load(f)
        self.assertNotIn("version", compose)
        services = compose["services"]
        profiles = {}
        for name, s in services.items():
            cmd = s.get("command", [])
            if "simulate" in cmd:
                profiles[name] = next(a for a in cmd if a.startswith("--profile="))
        self.assertGreaterEqual(len(profiles), 4)
        self.assertEqual(set(profiles.values()), {"--profile=nic", "--profile=nvme", "--profile=gpu",
                                                  "--profile=camera", "--profile=untrusted"})
        for name in profiles:
            self.assertEqual(services[name]["depends_on"]["iommud"]["condition"], "service_healthy", name)
        self.assertEqual(services["grafana"]["profiles"], ["grafana"])

    def test_image_declares_the_state_dir_a_volume_owned_by_the_daemon_user(self):
        stages = dockerfile_stages()
        runtime = " ".join(stages["runtime"])
        self.assertRegex(runtime, rf"useradd .*--uid {IOMMUD_UID} .* iommu\b")
        iommud = stages["iommud"]
        creates = [line for line in iommud if line.startswith("RUN ") and STATE_DIR in line]
        self.assertEqual(len(creates), 1, iommud)
        self.assertRegex(creates[0], rf"install -d -o iommu -g iommu -m 0700 {STATE_DIR}\b")
        volume = next(line for line in iommud if line.startswith("VOLUME "))
        self.assertIn(STATE_DIR, volume)
        # The directory is made before it becomes a volume (later changes to a
        # volume path are discarded), and the daemon runs as its owner.
        self.assertLess(iommud.index(creates[0]), iommud.index(volume))
        self.assertIn("USER iommu", iommud)
        # The default command keeps the default state directory.
        cmd = next(line for line in iommud if line.startswith("CMD "))
        self.assertNotIn("--no_store", cmd)
        self.assertNotIn("--state_dir", cmd)

    def test_images_carry_the_project_version(self):
        # The images are built tagged :latest and :<version> (make images, the
        # end-to-end test); compose runs :latest, Kubernetes pins the version.
        version = df.project_version()
        with open(df.COMPOSE) as f:
            compose = yaml.safe_load(f)
        for name, service in compose["services"].items():
            image = service["image"]
            if image.startswith("iommu-broker/"):
                self.assertIn(image, df.image_tags(image.split(":")[0]), name)
        self.assertEqual(set(df.IMAGES), {s["image"].split(":")[0] for s in
                                          compose["services"].values()
                                          if s["image"].startswith("iommu-broker/")})
        pod = k8s_docs()["DaemonSet"]["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            if container["image"].startswith("iommu-broker/"):
                self.assertEqual(container["image"].split(":")[1], version, container["name"])
        with open(os.path.join(df.ROOT, "Makefile")) as f:
            makefile = f.read()
        for name in df.IMAGES:
            tags = f"-t {name}:latest -t {name}:$(VERSION)"
            self.assertTrue(tags in makefile, f"make images lacks {tags}")

    def test_compose_keeps_iommud_state_on_a_named_volume(self):
        with open(df.COMPOSE) as f:
            compose = yaml.safe_load(f)
        iommud = compose["services"]["iommud"]
        self.assertNotIn("--no_store", iommud["command"])
        state_dir = state_dir_of(iommud["command"])
        mounts = dict(reversed(v.split(":", 1)) for v in iommud["volumes"])
        self.assertIn(state_dir, mounts)
        volume = mounts[state_dir]
        self.assertFalse(volume.startswith((".", "/")), "a named volume, not a bind mount")
        self.assertIn(volume, compose["volumes"])
        # Only iommud mounts it: the store admits one daemon at a time.
        for name, service in compose["services"].items():
            if name != "iommud":
                self.assertFalse(any(v.split(":", 1)[0] == volume for v in service.get("volumes", [])),
                                 name)

    def test_kubernetes_keeps_iommud_state_on_a_host_path_owned_by_the_pod_user(self):
        pod = k8s_docs()["DaemonSet"]["spec"]["template"]["spec"]
        self.assertEqual(pod["securityContext"]["runAsUser"], IOMMUD_UID)
        container = pod["containers"][0]
        self.assertNotIn("--no_store", container["args"])
        state_dir = state_dir_of(container["args"])
        self.assertIn(f"--state_dir={state_dir}", container["args"])
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == state_dir)
        self.assertFalse(mount.get("readOnly", False))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        # The kubelet would create a missing host directory as root, 0755,
        # which the unprivileged pod could not use (fsGroup does not apply
        # to hostPath): the node makes it, owned by the pod's user, 0700, and
        # the pod refuses to start without it.
        self.assertEqual(volume["hostPath"], {"path": STATE_DIR, "type": "Directory"})
        self.assertEqual(tmpfiles()[STATE_DIR], ("d", 0o700, str(IOMMUD_UID), str(IOMMUD_UID)))

    def test_kubernetes_runs_on_every_node_critical_and_unprivileged(self):
        pod = k8s_docs()["DaemonSet"]["spec"]["template"]["spec"]
        # One toleration of every taint (no key, no effect): every node.
        self.assertIn({"operator": "Exists"}, pod.get("tolerations", []), "tolerate every taint")
        self.assertEqual(pod.get("priorityClassName"), "system-node-critical")
        security = pod["securityContext"]
        self.assertEqual(security.get("seccompProfile"), {"type": "RuntimeDefault"})
        self.assertTrue(security["runAsNonRoot"])
        self.assertNotEqual(security["runAsUser"], 0)
        # No container, init containers included, runs as root, gains
        # privileges or adds a capability.
        containers = pod["containers"] + pod.get("initContainers", [])
        for c in containers:
            sc = c.get("securityContext", {})
            self.assertNotEqual(sc.get("runAsUser", security["runAsUser"]), 0, c["name"])
            self.assertTrue(sc.get("runAsNonRoot", security["runAsNonRoot"]), c["name"])
            self.assertFalse(sc.get("privileged", False), c["name"])
            self.assertIs(sc.get("allowPrivilegeEscalation"), False, c["name"])
            self.assertEqual(sc.get("capabilities", {}).get("drop"), ["ALL"], c["name"])
            self.assertNotIn("add", sc.get("capabilities", {}), c["name"])

    def test_kubernetes_socket_is_for_a_documented_group(self):
        pod = k8s_docs()["DaemonSet"]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        flags = dict(a.split("=", 1) for a in container["args"])
        sockets = [a[len("unix:"):] for a in flags["--listen"].split(",") if a.startswith("unix:")]
        self.assertEqual(sockets, [f"{SOCKET_DIR}/iommud.sock"])
        # The socket: read-write for its group, nothing for others (a
        # client needs write permission to connect).
        self.assertIn("--unix_socket_mode", flags, "the socket's mode is the umask's")
        mode = int(flags["--unix_socket_mode"], 8)
        self.assertEqual(mode & 0o060, 0o060)
        self.assertEqual(mode & 0o007, 0)
        # Its group is the pod's group; the node's socket directory lets that
        # group in (search) and no one else, and the manifest names the group.
        group = pod["securityContext"]["runAsGroup"]
        kind, dir_mode, user, dir_group = tmpfiles()[SOCKET_DIR]
        self.assertEqual((kind, user, dir_group), ("d", str(IOMMUD_UID), str(group)))
        self.assertEqual(dir_mode & 0o710, 0o710)
        self.assertEqual(dir_mode & 0o007, 0)
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == SOCKET_DIR)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        self.assertEqual(volume["hostPath"], {"path": SOCKET_DIR, "type": "Directory"})
        with open(df.K8S) as f:
            self.assertIn(f"belongs to group {group}", f.read())

    def test_kubernetes_scrapes_each_pod_once(self):
        docs = k8s_docs()
        pod = docs["DaemonSet"]["spec"]["template"]
        annotations = pod["metadata"]["annotations"]
        self.assertEqual(annotations["prometheus.io/scrape"], "true")
        metrics = next(p for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "metrics")
        self.assertEqual(int(annotations["prometheus.io/port"]), metrics["containerPort"])
        self.assertEqual(annotations["prometheus.io/path"], "/metrics")
        flags = dict(a.split("=", 1) for a in pod["spec"]["containers"][0]["args"])
        self.assertEqual(int(flags["--metrics_listen"].rsplit(":", 1)[1]), metrics["containerPort"])
        # The Service selects the same pods: annotated too, they would be
        # scraped twice.
        service_annotations = docs["Service"]["metadata"].get("annotations", {})
        self.assertFalse([a for a in service_annotations if a.startswith("prometheus.io/")], service_annotations)

    def test_prometheus_operator_scrapes_the_daemonset_with_the_shipped_rules(self):
        operator = operator_docs()
        self.assertEqual(set(operator), {"PodMonitor", "PrometheusRule"})
        daemonset = k8s_docs()["DaemonSet"]
        pod = daemonset["spec"]["template"]
        namespace = daemonset["metadata"]["namespace"]
        monitor = operator["PodMonitor"]
        self.assertEqual(monitor["metadata"]["namespace"], namespace)
        selector = monitor["spec"]["selector"]["matchLabels"]
        self.assertEqual(pod["metadata"]["labels"], {**pod["metadata"]["labels"], **selector})
        [endpoint] = monitor["spec"]["podMetricsEndpoints"]
        ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
        self.assertIn(endpoint["port"], ports)
        self.assertEqual(str(ports[endpoint["port"]]), pod["metadata"]["annotations"]["prometheus.io/port"])
        self.assertEqual(endpoint["path"], pod["metadata"]["annotations"]["prometheus.io/path"])
        # Its job, the value of a pod label, is one the alerts select.
        job = pod["metadata"]["labels"][monitor["spec"]["jobLabel"]]
        up = df.alert_series(next(r["expr"] for r in df.rules() if r.get("alert") == "IommudDown"))
        job_regex = re.search(r'job=~"([^"]*)"', up).group(1)
        self.assertRegex(job, f"^(?:{job_regex})$")
        # A node's broker is its node, whatever pod serves it.
        self.assertIn({"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance"},
                      endpoint["relabelings"])
        # The PrometheusRule holds exactly the rules Prometheus loads from
        # deploy/prometheus/rules.
        rule = operator["PrometheusRule"]
        self.assertEqual(rule["metadata"]["namespace"], namespace)
        groups = []
        for name in sorted(os.listdir(df.RULES_DIR)):
            with open(os.path.join(df.RULES_DIR, name)) as f:
                groups.extend(yaml.safe_load(f)["groups"])
        self.assertEqual(rule["spec"]["groups"], groups,
                         "deploy/k8s/prometheus-operator/prometheusrule.yaml differs from deploy/prometheus/rules: "
                         "run scripts/gen_prometheus_rule.py")
        r = subprocess.run([sys.executable, os.path.join(df.ROOT, "scripts", "gen_prometheus_rule.py"), "--check"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

if __name__ == "__main__":
    unittest.main()
