"""Static checks of the shipped deploy/ files (no Docker needed): every
manifest and dashboard parses, Prometheus accepts the config and the rules,
the dashboard and the alerts are of the form the end-to-end test relies on,
and Kubernetes runs iommud with the compose demo's flags."""

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
        docs = {d["kind"]: d for d in next(docs for p, docs in df.manifests() if p == df.K8S)}
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
