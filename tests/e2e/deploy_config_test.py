"""Static checks of the shipped deploy/ files (no Docker needed): every
manifest and dashboard parses, Prometheus accepts the config and the rules,
the dashboard and the alerts are of the form the end-to-end test relies on,
Kubernetes runs iommud with the compose demo's flags, its tokens over TLS and
its probes on the health-only port, and compose forces --auth=none onto its
network knowingly."""

import os
import shutil
import subprocess
import tempfile
import unittest

import yaml

import deploy_files as df


class DeployConfigTest(unittest.TestCase):
    def test_every_manifest_and_dashboard_parses(self):
        found = {os.path.relpath(p, df.DEPLOY) for p, _ in df.manifests()}
        for expected in ["compose.yaml", "prometheus/prometheus.yml", "prometheus/rules/recording.yml",
                         "prometheus/rules/alerts.yml", "grafana/dashboards/iommu-broker.json",
                         "grafana/provisioning/datasources/prometheus.yml",
                         "grafana/provisioning/dashboards/iommu-broker.yml", "k8s/iommud.yaml"]:
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
        self.assertEqual(set(alerts), {"IommudDown", "IommuIovaSpaceNearlyExhausted", "IommuIovaFragmentationHigh",
                                       "IommuIotlbHitRatioLow", "IommuDeviceFaults", "IommuLazyStaleHits",
                                       "IommuRpcErrorRatioHigh", "IommuFaultRecordsDropped"})
        for name, rule in alerts.items():
            self.assertIsNotNone(df.alert_series(rule["expr"]), f"{name}: {rule['expr']}")
            self.assertIn(rule["labels"]["severity"], {"critical", "warning", "info"}, name)
            self.assertTrue(rule["annotations"]["summary"], name)
        self.assertIsNone(df.alert_series("rate(x[1m])"))
        self.assertEqual(df.alert_series('up{job="a"} == 0'), 'up{job="a"}')

    def test_dashboard_uses_the_provisioned_datasource_and_covers_every_area(self):
        dash = df.dashboard()
        self.assertEqual(dash["uid"], "iommu-broker")
        for p in dash["panels"]:
            if p["type"] != "row":
                self.assertEqual(p["datasource"]["uid"], "iommu-prometheus", p["title"])
        exprs = " ".join(e for _, e in df.dashboard_queries())
        for needle in ["iommu_iova_fragmentation", "iommu_iova_free_range_size_bytes_bucket", "iommu_iova_usage",
                       "iommu_iotlb_hit:ratio", "iommu_iotlb_misses", "iommu_iotlb_invalidations",
                       "iommu_mappings", "iommu_mapped_bytes", "iommu_faults", "grpc_server_handled",
                       "grpc_server_errors", "grpc_server_handling_seconds"]:
            self.assertIn(needle, exprs)
        self.assertNotIn("$", exprs)  # every variable substituted
        with open(os.path.join(df.DEPLOY, "grafana", "provisioning", "datasources", "prometheus.yml")) as f:
            ds = yaml.safe_load(f)["datasources"][0]
        self.assertEqual(ds["uid"], "iommu-prometheus")

    def test_kubernetes_runs_iommud_with_the_demo_flags(self):
        manifests = next(docs for p, docs in df.manifests() if p == df.K8S)
        docs = {d["kind"]: d for d in manifests}
        self.assertEqual(set(docs), {"Namespace", "Secret", "DaemonSet", "Service"})
        pod = docs["DaemonSet"]["spec"]["template"]
        self.assertEqual(pod["metadata"]["annotations"]["prometheus.io/scrape"], "true")
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


if __name__ == "__main__":
    unittest.main()
