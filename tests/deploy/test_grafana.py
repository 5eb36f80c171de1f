"""The Grafana dashboard: importable structure, the seed's panels and the new ones, and queries
that promtool accepts and that name only metrics and labels the sidecar exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from exported import BREAKER_STATES, METRICS, base_metric, labels_of
from promql_scan import for_prometheus, legend_labels, scan
from running import PROMTOOL, REPO

DASHBOARD = REPO / "deploy" / "grafana" / "sidecar-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24

Panel = dict[str, Any]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[Panel]:
    found: list[Panel] = dashboard()["panels"]
    return found


def exprs() -> list[tuple[str, str]]:
    """(where, expression) for every query on the dashboard, template variables included."""
    out = [
        (f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"])
        for p in panels()
        for t in p["targets"]
    ]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            # label_values(<selector>, <label>): the selector is PromQL, the label one of its.
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
            assert m, var["query"]
            out.append((f"variable {var['name']}", f"group by ({m.group(2)}) ({m.group(1)})"))
    return out


def panel_with(expr_pattern: str) -> Panel:
    """The one panel with a query matching expr_pattern (a regex)."""
    found = [p for p in panels() if any(re.search(expr_pattern, t["expr"]) for t in p["targets"])]
    assert len(found) == 1, f"{len(found)} panels query {expr_pattern!r}"
    return found[0]


# --- importable ----------------------------------------------------------------------------


def test_dashboard_header() -> None:
    d = dashboard()
    assert d["schemaVersion"] >= 39
    assert d["uid"] == "sidecar-proxy" and d["title"]
    assert "id" not in d or d["id"] is None, "an exported id would clash on import"
    [ds] = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert ds["name"] == "datasource" and ds["query"] == "prometheus"


def test_panels_are_timeseries_or_stat_with_unique_ids() -> None:
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    for p in panels():
        assert p["type"] in ("timeseries", "stat"), p["title"]
        assert p["title"] and p["targets"], p["id"]
        assert p["datasource"] == DATASOURCE, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE, p["title"]
            assert t["expr"].strip(), p["title"]


def test_panels_are_placed_on_the_grid_without_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for p in panels():
        g = p["gridPos"]
        assert set(g) == {"h", "w", "x", "y"}, p["title"]
        assert all(isinstance(v, int) and v >= 0 for v in g.values()), p["title"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= GRID_WIDTH, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = p["title"]


# --- the panels ----------------------------------------------------------------------------


def test_the_seeds_panels() -> None:
    by_status = panel_with(r"sum by \(status\) \(rate\(sidecar_requests_total")
    assert by_status["type"] == "timeseries"
    p99 = panel_with(r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(sidecar_request_duration")
    assert p99["type"] == "timeseries" and p99["fieldConfig"]["defaults"]["unit"] == "s"
    errors = panel_with(r"sum by \(type\) \(rate\(sidecar_upstream_errors_total")
    assert errors["type"] == "timeseries"


def test_circuit_breaker_stat_names_and_colours_each_state() -> None:
    breaker = panel_with(r"sidecar_circuit_breaker_state")
    assert breaker["type"] == "stat"
    [mapping] = breaker["fieldConfig"]["defaults"]["mappings"]
    assert mapping["type"] == "value"
    texts = {int(value): m["text"] for value, m in mapping["options"].items()}
    assert texts == BREAKER_STATES
    colours = {int(value): m["color"] for value, m in mapping["options"].items()}
    assert colours == {0: "green", 1: "red", 2: "yellow"}
    # The thresholds colour the same way when a mapping is not applied (e.g. a max over pods).
    steps = breaker["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["value"], s["color"]) for s in steps] == [(None, "green"), (1, "red"), (2, "yellow")]


def test_the_new_panels() -> None:
    retries = panel_with(r"sidecar_retries_total")
    assert any("sidecar_retries_budget_exhausted_total" in t["expr"] for t in retries["targets"])
    assert (
        "reason"
        in scan(panel_with(r"sidecar_requests_rejected_total")["targets"][0]["expr"]).labels
    )
    upstream = panel_with(r"sidecar_upstream_response_seconds_bucket")
    quantiles = {re.search(r"histogram_quantile\(([\d.]+)", t["expr"]) for t in upstream["targets"]}
    assert {q.group(1) for q in quantiles if q} == {"0.5", "0.99"}
    connections = panel_with(r"sidecar_upstream_connections_opened_total")
    assert any("reused" in t["expr"] for t in connections["targets"])
    for metric in (
        "sidecar_downstream_connections",
        "sidecar_requests_in_flight",
        "sidecar_app_ready",
        "sidecar_config_reloads_total",
    ):
        assert any(
            p["type"] == "timeseries" and metric in t["expr"]
            for p in panels()
            for t in p["targets"]
        ), metric


def test_the_slo_panels() -> None:
    burn = panel_with(r"sidecar_slo_burn_rate")
    [target] = burn["targets"]
    assert burn["type"] == "timeseries"
    assert re.match(r"max by \(slo, window\) \(sidecar_slo_burn_rate\{", target["expr"])
    assert legend_labels(target["legendFormat"]) == {"slo", "window"}
    # The dashed threshold lines are exactly the burn rates the alerts fire at.
    steps = burn["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[0]["value"] is None
    alerts = (REPO / "deploy" / "prometheus" / "alerts.yml").read_text()
    fired_at = re.findall(r'sidecar_slo_burn_rate\{window="\w+"\}\) > ([\d.]+)', alerts)
    assert {s["value"] for s in steps[1:]} == {float(v) for v in fired_at}
    assert burn["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"] == {"mode": "dashed"}
    left = panel_with(r"sidecar_slo_error_budget_remaining")
    assert left["targets"][0]["expr"].startswith("min by (slo) (")
    assert left["fieldConfig"]["defaults"]["unit"] == "percentunit"


def test_every_exported_metric_is_on_the_dashboard() -> None:
    shown = {base_metric(m) for _, e in exprs() for m in scan(e).metrics}
    assert shown >= set(METRICS), set(METRICS) - shown


# --- the queries ---------------------------------------------------------------------------


def test_queries_name_only_exported_metrics_and_their_labels() -> None:
    legends = {
        f"panel {p['id']} {p['title']!r} {t['refId']}": t.get("legendFormat", "")
        for p in panels()
        for t in p["targets"]
    }
    for where, expr in exprs():
        names = scan(expr)
        assert names.metrics, where
        unknown = {m for m in names.metrics if base_metric(m) is None}
        assert not unknown, (where, unknown)
        allowed = set().union(*(labels_of(m) for m in names.metrics))
        assert names.labels <= allowed, (where, names.labels - allowed)
        assert legend_labels(legends.get(where, "")) <= allowed, where


def test_queries_follow_the_variables() -> None:
    # Every panel query honours the job and instance pickers.
    for p in panels():
        for t in p["targets"]:
            assert 'job=~"$job"' in t["expr"] and 'instance=~"$instance"' in t["expr"], p["title"]
            if "rate(" in t["expr"] or "increase(" in t["expr"]:
                assert "[$__rate_interval]" in t["expr"] or "[$__range]" in t["expr"], p["title"]


def test_scanner_reads_promql() -> None:
    names = scan(
        'sum without (method) (rate(sidecar_a_total{status=~"5..", path!="/x"}[5m] offset 1m))'
        " / on (instance) group_left sum by (instance, le) (sidecar_b_bucket)"
        ' > bool 0.5 and topk(3, sidecar_c{job=~"$job"}) unless sidecar_d'
    )
    assert names.metrics == {"sidecar_a_total", "sidecar_b_bucket", "sidecar_c", "sidecar_d"}
    assert names.labels == {"method", "status", "path", "instance", "le", "job"}
    assert legend_labels("{{status}} on {{ instance }}") == {"status", "instance"}
    for garbage in ("sidecar_a_total; drop", 'sidecar_a_total{job="x"'):
        with pytest.raises(ValueError):
            scan(garbage)


def promtool_check(
    exprs_: list[tuple[str, str]], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """promtool check rules on a rule file holding each expression as a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": for_prometheus(expr)}
        for i, (_, expr) in enumerate(exprs_)
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )


def test_promtool_accepts_every_query(tmp_path: Path) -> None:
    queries = exprs()
    out = promtool_check(queries, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(queries)} rules found" in out.stdout


def test_promtool_check_rejects_a_broken_query(tmp_path: Path) -> None:
    out = promtool_check([("broken", "sum(rate(sidecar_requests_total[5m])")], tmp_path)
    assert out.returncode != 0
