# SPDX-License-Identifier: Apache-2.0
"""The shipped deploy/ files, parsed: shared by the static check and the
end-to-end test so both read the dashboard and rules the same way."""

import json
import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
DASHBOARD = os.path.join(DEPLOY, "grafana", "dashboards", "iommu-broker.json")
RULES_DIR = os.path.join(DEPLOY, "prometheus", "rules")
RULE_TESTS_DIR = os.path.join(DEPLOY, "prometheus", "tests")
COMPOSE = os.path.join(DEPLOY, "compose.yaml")
K8S = os.path.join(DEPLOY, "k8s", "iommud.yaml")
K8S_TMPFILES = os.path.join(DEPLOY, "k8s", "iommud-tmpfiles.conf")
K8S_OPERATOR = os.path.join(DEPLOY, "k8s", "prometheus-operator")


def project_version():
    """The project's one version string: project(iommu_broker VERSION x.y.z)
    in the top-level CMakeLists.txt; images are tagged with it."""
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        return re.search(r"project\(\s*iommu_broker\s+VERSION\s+([0-9.]+)", f.read()).group(1)


# The images the demo and the Kubernetes example run: name -> `docker build`
# arguments (context: the repository root). Each is tagged :latest (what
# compose.yaml names) and :<project version> (what deploy/k8s names).
IMAGES = {
    "iommu-broker/iommud": ["-f", "deploy/Dockerfile", "--target", "iommud", "."],
    "iommu-broker/iommuctl": ["-f", "deploy/Dockerfile", "--target", "iommuctl", "."],
    "iommu-broker/prometheus": ["deploy/prometheus"],
}


def image_tags(name):
    return [f"{name}:latest", f"{name}:{project_version()}"]

# Dashboard variables and the values they take in the demo (one job, every
# instance, every SMMU).
VARIABLE_VALUES = {"$smmu": ".*", "$job": "iommud", "$instance": ".+"}

# An alert is `<series> <comparison> <number>`, or `absent(<series>)`; either
# way the series must have data in the demo.
_ALERT_FORM = re.compile(r"^(?P<series>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<threshold>-?[0-9.]+)\s*$", re.S)
_ABSENT_FORM = re.compile(r"^absent\((?P<series>[^()]+)\)$", re.S)

# PromQL words that are not metric names.
_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "group",
    "count_values", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "absent",
    "abs", "clamp_max", "clamp_min", "label_replace", "label_join", "vector", "scalar", "time",
    "max_over_time", "min_over_time", "avg_over_time", "sum_over_time", "count_over_time",
    "last_over_time", "changes", "resets", "sort", "sort_desc", "round", "ceil", "floor", "inf", "nan",
}


def manifests():
    """Every YAML and JSON file under deploy/ (path, parsed documents)."""
    out = []
    for dirpath, _, names in os.walk(DEPLOY):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            with open(path) as f:
                if name.endswith((".yml", ".yaml")):
                    out.append((path, list(yaml.safe_load_all(f))))
                elif name.endswith(".json"):
                    out.append((path, [json.load(f)]))
    return out


def dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def _panels(panels):
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def dashboard_queries():
    """(panel title, PromQL with variables substituted) for every target."""
    out = []
    for p in _panels(dashboard()["panels"]):
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in VARIABLE_VALUES.items():
                expr = expr.replace(var, value)
            out.append((p["title"], expr))
    return out


def rules():
    """Every rule of every rule file: dicts with `record` or `alert` and `expr`."""
    out = []
    for name in sorted(os.listdir(RULES_DIR)):
        with open(os.path.join(RULES_DIR, name)) as f:
            for group in yaml.safe_load(f)["groups"]:
                out.extend(group["rules"])
    return out


def alert_series(expr):
    """The series of an alert expression (the left-hand side of a
    comparison, the argument of absent), or None if not of either form."""
    m = _ABSENT_FORM.match(expr.strip()) or _ALERT_FORM.match(expr.strip())
    return m.group("series") if m else None


def rule_tests():
    """The promtool unit test files: (path, parsed)."""
    out = []
    for name in sorted(os.listdir(RULE_TESTS_DIR)):
        if name.endswith((".yml", ".yaml")):
            path = os.path.join(RULE_TESTS_DIR, name)
            with open(path) as f:
                out.append((path, yaml.safe_load(f)))
    return out


def selectors(expr):
    """The vector selectors of a PromQL expression: [(metric name, matchers
    text or "")]. Good enough for the shipped rules and dashboard: strings,
    `by (...)`/`without (...)`/`on (...)` lists and durations are skipped."""
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    out = []
    pos = 0
    for m in re.finditer(r'\{[^}]*\}|\[[^\]]*\]|"(?:[^"\\]|\\.)*"|[A-Za-z_:][A-Za-z0-9_:]*', text):
        if m.start() < pos:
            continue
        token = m.group(0)
        if token[0] in '{["' or token in _PROMQL_WORDS:
            continue
        after = text[m.end():]
        if re.match(r"\s*\(", after):  # a function
            continue
        matchers = re.match(r"\s*(\{[^}]*\})", after)
        if matchers:
            pos = m.end() + matchers.end()
        out.append((token, matchers.group(1) if matchers else ""))
    return out
