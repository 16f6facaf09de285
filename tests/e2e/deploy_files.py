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
COMPOSE = os.path.join(DEPLOY, "compose.yaml")
K8S = os.path.join(DEPLOY, "k8s", "iommud.yaml")

# Dashboard variables and the value that selects everything.
VARIABLE_VALUES = {"$smmu": ".*"}

# An alert is `<series> <comparison> <number>`; the series must have data.
_ALERT_FORM = re.compile(r"^(?P<series>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<threshold>-?[0-9.]+)\s*$", re.S)


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
    """The left-hand side of an alert expression, or None if not of the form."""
    m = _ALERT_FORM.match(expr.strip())
    return m.group("series") if m else None
