# SPDX-License-Identifier: Apache-2.0
"""The Prometheus rules are right on a fleet, and their unit tests prove it.

`promtool test rules` runs deploy/prometheus/tests/*.yml against the shipped
rules. Around it, this checks that those tests cover every recording rule and
every alert (each alert seen firing and not firing, on series of two or more
nodes), that every rule keeps `instance` and `job` and names no job, and that
the tests catch a broken rule: each rule is broken in turn (its per-node
labels aggregated away, its threshold moved, its `for` dropped, its job
selector widened) and promtool must then fail."""

import copy
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import yaml

import deploy_files as df

PROMTOOL = shutil.which("promtool")

# `<series> <op> <threshold>` and the threshold a mutation moves it to: just
# past it on the quiet side, where each alert's tests hold a node that must
# not fire.
_THRESHOLD = re.compile(r"^(?P<series>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<threshold>-?[0-9.]+)\s*$", re.S)


def moved_threshold(expr):
    m = _THRESHOLD.match(expr.strip())
    if not m:
        return None
    series, op, threshold = m.group("series"), m.group("op"), float(m.group("threshold"))
    if op == "==":
        return f"{series} != {m.group('threshold')}"
    if op in (">", ">="):
        return f"{series} >= 0" if threshold == 0 else f"{series} {op} {threshold * 0.7:g}"
    if op in ("<", "<="):
        return f"{series} {op} {threshold * 1.6:g}"
    return None


def without_instance(expr):
    """The expression with its per-node labels summed away, as the rules
    were before they were right on a fleet."""
    m = _THRESHOLD.match(expr.strip())
    if m:
        return f"sum without (instance, job) ({m.group('series')}) {m.group('op')} {m.group('threshold')}"
    return f"sum without (instance, job) ({expr})"


def run_promtool(test_dir):
    files = sorted(os.path.join(test_dir, n) for n in os.listdir(test_dir) if n.endswith((".yml", ".yaml")))
    return subprocess.run([PROMTOOL, "test", "rules"] + files, capture_output=True, text=True)


def rule_files():
    """{file name: parsed} of deploy/prometheus/rules."""
    out = {}
    for name in sorted(os.listdir(df.RULES_DIR)):
        with open(os.path.join(df.RULES_DIR, name)) as f:
            out[name] = yaml.safe_load(f)
    return out


def instances_of(test):
    return {m.group(1) for s in test.get("input_series", [])
            for m in [re.search(r'instance="([^"]*)"', s["series"])] if m}


class RuleFormTest(unittest.TestCase):
    def test_every_rule_keeps_instance_and_job_and_names_no_job(self):
        for rule in df.rules():
            name = rule.get("record") or rule.get("alert")
            expr = rule["expr"]
            for kind, labels in re.findall(r"\b(by|without)\s*\(([^)]*)\)", expr):
                labels = {l.strip() for l in labels.split(",") if l.strip()}
                if kind == "by":
                    self.assertLessEqual({"instance", "job"}, labels, f"{name}: {expr}")
                else:
                    self.assertFalse({"instance", "job"} & labels, f"{name}: {expr}")
            # An aggregation says what it keeps, before its argument.
            for m in re.finditer(r"\b(sum|max|min|avg|count|group|topk|bottomk|quantile)\s*(by|without)?", expr):
                self.assertIsNotNone(m.group(2), f"{name}: {m.group(1)} without by/without: {expr}")
            self.assertNotRegex(expr, r'\bjob\s*=\s*"', f"{name}: a job named, not selected: {expr}")

    def test_liveness_is_up_per_target_and_absent_for_none(self):
        alerts = {r["alert"]: r["expr"] for r in df.rules() if "alert" in r}
        self.assertRegex(alerts["IommudDown"], r"^up\{job=~\"[^\"]+\"\} == 0$")
        selector = df.alert_series(alerts["IommudDown"])
        self.assertEqual(alerts["IommudTargetsMissing"], f"absent({selector})")


@unittest.skipUnless(PROMTOOL, "promtool not installed")
class RuleUnitTest(unittest.TestCase):
    def test_promtool_unit_tests_pass(self):
        r = run_promtool(df.RULE_TESTS_DIR)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_unit_tests_load_every_rule_file(self):
        loaded = set()
        for path, test in df.rule_tests():
            for f in test["rule_files"]:
                loaded.add(os.path.normpath(os.path.join(os.path.dirname(path), f)))
        self.assertEqual(loaded, {os.path.join(df.RULES_DIR, n) for n in os.listdir(df.RULES_DIR)})

    def test_every_recording_rule_is_checked_on_two_nodes(self):
        checked = {}
        for _, doc in df.rule_tests():
            for test in doc["tests"]:
                for case in test.get("promql_expr_test", []):
                    samples = case.get("exp_samples") or []
                    names = {re.match(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)", s["labels"]).group(1) for s in samples
                             if re.match(r"\s*[A-Za-z_:]", s["labels"])}
                    nodes = {m.group(1) for s in samples for m in [re.search(r'instance="([^"]*)"', s["labels"])]
                             if m}
                    for name in names:
                        checked.setdefault(name, set()).update(nodes)
        for rule in df.rules():
            if "record" in rule:
                self.assertIn(rule["record"], checked, "no promql_expr_test expects its samples")
                self.assertGreaterEqual(len(checked[rule["record"]]), 2, f"{rule['record']}: one node only")

    def test_every_alert_is_seen_firing_and_not_firing_on_two_nodes(self):
        seen = {}
        for _, doc in df.rule_tests():
            for test in doc["tests"]:
                nodes = instances_of(test)
                for case in test.get("alert_rule_test", []):
                    s = seen.setdefault(case["alertname"], {"firing": False, "quiet": False, "nodes": set()})
                    s["firing" if case.get("exp_alerts") else "quiet"] = True
                    s["nodes"] |= nodes
                    for alert in case.get("exp_alerts") or []:
                        if case["alertname"] != "IommudTargetsMissing":
                            self.assertIn("instance", alert["exp_labels"], case["alertname"])
                            self.assertIn("job", alert["exp_labels"], case["alertname"])
        for rule in df.rules():
            if "alert" in rule:
                s = seen.get(rule["alert"])
                self.assertIsNotNone(s, f"{rule['alert']}: no alert_rule_test")
                self.assertTrue(s["firing"], f"{rule['alert']}: never seen firing")
                self.assertTrue(s["quiet"], f"{rule['alert']}: never seen not firing")
                self.assertGreaterEqual(len(s["nodes"]), 2, f"{rule['alert']}: one node only")

    def test_the_unit_tests_catch_a_broken_rule(self):
        """Each mutation of one rule must make promtool fail."""
        mutations = []  # (rule name, what, file name, group index, rule index, fields changed)
        for file_name, doc in rule_files().items():
            for g, group in enumerate(doc["groups"]):
                for r, rule in enumerate(group["rules"]):
                    name = rule.get("record") or rule.get("alert")
                    expr = rule["expr"]

                    def mutate(what, change):
                        mutations.append((name, what, file_name, g, r, change))

                    if not expr.startswith("absent("):
                        mutate("instance and job aggregated away", {"expr": without_instance(expr)})
                    if "alert" in rule and moved_threshold(expr):
                        mutate("threshold moved", {"expr": moved_threshold(expr)})
                    if "alert" in rule and rule.get("for"):
                        mutate("no `for`", {"for": "0s"})
                    if 'job=~"' in expr:
                        mutate("any job", {"expr": re.sub(r'job=~"[^"]*"', 'job=~".+"', expr)})
        self.assertEqual({m[0] for m in mutations}, {r.get("record") or r.get("alert") for r in df.rules()},
                         "a rule no mutation breaks")
        survived = []
        with tempfile.TemporaryDirectory() as tmp:
            rules_dir = os.path.join(tmp, "rules")
            shutil.copytree(df.RULE_TESTS_DIR, os.path.join(tmp, "tests"))
            for name, what, file_name, g, r, change in mutations:
                shutil.rmtree(rules_dir, ignore_errors=True)
                shutil.copytree(df.RULES_DIR, rules_dir)
                doc = copy.deepcopy(rule_files()[file_name])
                doc["groups"][g]["rules"][r].update(change)
                with open(os.path.join(rules_dir, file_name), "w") as f:
                    yaml.safe_dump(doc, f, sort_keys=False)
                if run_promtool(os.path.join(tmp, "tests")).returncode == 0:
                    survived.append(f"{name}, {what}: {change}")
        self.assertEqual(survived, [], "broken rules the unit tests let through")

if __name__ == "__main__":
    unittest.main()
