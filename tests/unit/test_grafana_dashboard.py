"""cluster/grafana/hsd-ray-dashboard.json: every panel's query names metrics the project exports, the panels the
dashboard promises are there, and it has the shape Grafana imports.

The exported set is derived from the code, not from a list kept here: every ray.util.metrics metric the package
creates (hsd_ray/metrics.py creates them from its METRICS table; any other module that creates one by a literal name
adds it), under the names Ray's Prometheus export gives them (`ray_` prefix; a histogram as _bucket/_sum/_count).
tests/integration/test_observability.py runs the dashboard's queries against a real Prometheus.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hsd_ray.metrics import METRICS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "cluster" / "grafana" / "hsd-ray-dashboard.json"
GRAFANA_VARS = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}  # Grafana's built-ins used here
RAY_KINDS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram"}
# what the dashboard promises to show (issue 15): funnel, queue depth, staleness, versions per replica, chat latency,
# teacher and learner tokens/s, weight-load time and failures, feedback gate, version gate, per-version feedback
PROMISED = {"hsd_replies_recorded_total", "hsd_turns_captured_total", "hsd_gate_decisions_total",
            "hsd_teacher_turns_scored_total", "hsd_learner_turns_total", "hsd_queue_depth", "hsd_staleness_versions",
            "hsd_staleness_s", "hsd_replica_policy_version", "hsd_chat_latency_s", "hsd_teacher_tokens_scored_total",
            "hsd_learner_tokens_total", "hsd_weight_load_s", "hsd_weight_load_failures_total",
            "hsd_versions_rejected_total", "hsd_feedback_total"}


def created_metrics() -> dict[str, str]:
    """name -> kind of every ray.util.metrics metric the package creates (found in the source)."""
    made: dict[str, str] = {}
    for path in sorted((ROOT / "hsd_ray").rglob("*.py")):
        tree = ast.parse(path.read_text())
        if not any(isinstance(n, (ast.Import, ast.ImportFrom)) and "ray.util" in ast.unparse(n) and "metrics"
                   in ast.unparse(n) for n in ast.walk(tree)):
            continue
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            func = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", None)
            if func not in RAY_KINDS:
                continue
            if path.name == "metrics.py" and path.parent.name == "hsd_ray":
                made.update({name: kind for name, (kind, _, _) in METRICS.items()})  # created from the table
            else:
                assert call.args and isinstance(call.args[0], ast.Constant), f"{path}: metric name not a literal"
                made[call.args[0].value] = RAY_KINDS[func]
    return made


def exported_names() -> set[str]:
    suffixes = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {f"ray_{name}{s}" for name, kind in created_metrics().items() for s in suffixes[kind]}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    out = []
    for p in dashboard()["panels"]:
        out += p.get("panels", []) if p["type"] == "row" else [p]
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers, strings, by/without lists and
    function calls."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    words = [m.group(1) for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\(?)", bare) if not m.group(2)]
    return {w for w in words if not re.fullmatch(r"(sum|max|min|avg|count|by|le|bool|and|or|unless|offset|e|inf|nan)",
                                                 w, re.I)}


def expand(expr: str) -> str:
    """The expression as Prometheus would get it: dashboard variables replaced (all sessions, Grafana's windows)."""
    values = {v["name"]: ".+" for v in dashboard()["templating"]["list"] if v["type"] != "datasource"}
    values.update(GRAFANA_VARS)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


def test_the_exported_set_comes_from_the_code():
    made = created_metrics()
    assert set(METRICS) <= set(made) and all(name.startswith("hsd_") for name in made)
    assert "ray_hsd_chat_latency_s_bucket" in exported_names() and "ray_hsd_turns_captured_total" in exported_names()


def test_every_panel_query_names_only_exported_metrics():
    exported = exported_names()
    for panel in panels():
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']!r}: {target['expr']!r} names no metric"
            assert names <= exported, f"{panel['title']!r}: not exported: {sorted(names - exported)}"


def test_the_promised_panels_are_there():
    shown = {n.removeprefix("ray_").removesuffix("_bucket") for p in panels() for t in p["targets"]
             for n in metric_names(t["expr"])}
    assert PROMISED <= shown, f"missing: {sorted(PROMISED - shown)}"
    assert PROMISED <= set(METRICS)


def test_the_metric_name_reader_is_not_fooled():
    expr = ('histogram_quantile(0.9, sum by (le, role) (rate(ray_hsd_weight_load_s_bucket{role="x", '
            'SessionName=~"$SessionName"}[$__rate_interval]))) / max(ray_hsd_policy_version)')
    assert metric_names(expr) == {"ray_hsd_weight_load_s_bucket", "ray_hsd_policy_version"}
    assert metric_names('sum(rate(ray_hsd_nope_total{a="b"}[1m]))') - exported_names() == {"ray_hsd_nope_total"}


def test_importable_shape():
    d = dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    assert any(i["pluginId"] == "prometheus" for i in d["__inputs"])
    variables = {v["name"] for v in d["templating"]["list"]}
    assert "datasource" in variables
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        area = {(g["x"] + i, g["y"] + j) for i in range(g["w"]) for j in range(g["h"])}
        assert not area & cells, f"panel {p['title']!r} overlaps another"
        cells |= area
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            for t in p["targets"]:
                used = set(re.findall(r"\$\{?(\w+)\}?", t["expr"]))
                assert used <= variables | set(GRAFANA_VARS), (p["title"], used)


def test_every_query_parses_as_promql(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found (scripts/install_prometheus.sh installs it with Prometheus)")
    rules = [{"record": f"hsd_check:q{i}", "expr": expand(t["expr"])} for i, t in
             enumerate(t for p in panels() for t in p["targets"])]
    path = tmp_path / "rules.json"  # YAML is a superset of JSON
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path.write_text(json.dumps({"groups": [{"name": "bad", "rules": [{"record": "x:y", "expr": "sum(rate(a[1m])"}]}]}))
    assert subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, timeout=60).returncode != 0
