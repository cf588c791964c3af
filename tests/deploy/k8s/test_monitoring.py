"""Alert rules and the Grafana dashboard: valid PromQL, only series skinscreen exposes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from skinscreen.gateway import metrics as gateway_metrics
from skinscreen.inference import metrics as inference_metrics
from skinscreen.runtime.queue_metrics import QueueCollector, QueueState
from skinscreen.trainer import metrics as trainer_metrics

from .conftest import K8S

ALERTS = K8S / "base" / "monitoring" / "alerts.yaml"
DASHBOARD = K8S / "base" / "monitoring" / "dashboard.json"
# Series Prometheus itself adds to every target.
BUILTIN = {"up"}
# Grafana replaces these before Prometheus sees the query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": "skinscreen"}

# The alerts the issue asks for, by name.
REQUIRED_ALERTS = {
    "SkinscreenQueueBacklogGrowing",  # queue backlog growing
    "SkinscreenSubmitLatencyHigh",  # p99 latency over target
    "SkinscreenGatewayErrorRateHigh",  # error rate
    "SkinscreenNoActiveModel",  # no active model
    "SkinscreenModelLoadFailures",  # model load failures
    "SkinscreenTargetDown",  # worker down
    "SkinscreenNoInferenceWorker",  # worker down while work waits
}


def _samples(metric: MetricWrapperBase) -> set[str]:
    """The sample names a metric object exposes."""
    names = set()
    for family in metric.describe():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "info": ("_info",),
        }.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names


def exposed_series() -> set[str]:
    """Every sample name skinscreen's services expose (from the metric objects themselves)."""
    names = set(BUILTIN)
    for module in (gateway_metrics, inference_metrics, trainer_metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                names |= _samples(value)
    names |= {family.name for family in QueueCollector(QueueState()).collect()}
    return names


def _selectors(node: Any) -> Iterator[promql_parser.VectorSelector]:
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    elif isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from _selectors(node.lhs)
        yield from _selectors(node.rhs)
    elif isinstance(node, promql_parser.Call):
        for argument in node.args:
            yield from _selectors(argument)
    elif isinstance(
        node,
        promql_parser.AggregateExpr
        | promql_parser.ParenExpr
        | promql_parser.SubqueryExpr
        | promql_parser.UnaryExpr,
    ):
        yield from _selectors(node.expr)


def series_of(expr: str) -> set[str]:
    """Parse `expr` (raises ValueError if it is not PromQL) and return the series it reads."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    selectors = _selectors(promql_parser.parse(expr))
    return {selector.name or "" for selector in selectors}


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["spec"]["groups"] for rule in group["rules"]]


def test_the_metric_names_follow_prometheus_conventions() -> None:
    names = exposed_series() - BUILTIN
    assert all(name.startswith("skinscreen_") for name in names), names
    for metric in (
        value
        for module in (gateway_metrics, inference_metrics, trainer_metrics)
        for value in vars(module).values()
        if isinstance(value, MetricWrapperBase)
    ):
        (family,) = metric.describe()
        # A unit in the name of what has one; counters end in _total when exposed.
        if family.type == "histogram" or family.type == "gauge":
            assert re.search(r"_(seconds|bytes|size|ratio|tasks)$", family.name), family.name


def test_the_series_parser_sees_every_selector() -> None:
    assert series_of('sum(rate(a_total{x="1"}[5m])) / on (y) (b unless deriv(c[10m:1m]))') == {
        "a_total",
        "b",
        "c",
    }
    with pytest.raises(ValueError, match="parenthesis"):
        series_of("rate(a_total[5m]")


def test_alert_rules_parse_and_read_only_exposed_series() -> None:
    rules = _alert_rules()
    exposed = exposed_series()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    assert len({rule["alert"] for rule in rules}) == len(rules), "alert names repeat"
    for rule in rules:
        unknown = series_of(rule["expr"]) - exposed
        assert not unknown, f"{rule['alert']} reads series no service exposes: {unknown}"
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_alert_templates_name_labels_the_expression_keeps() -> None:
    """`{{ $labels.x }}` is empty unless the expression's result keeps label x."""
    for rule in _alert_rules():
        text = " ".join(rule["annotations"].values())
        used = set(re.findall(r"\$labels\.(\w+)", text))
        keeps = set(re.findall(r"by \(([^)]*)\)", rule["expr"]))
        kept = {label.strip() for group in keeps for label in group.split(",")}
        aggregated = bool(re.search(r"\b(sum|max|count|min|avg)\b", rule["expr"]))
        if aggregated:
            assert used <= kept, f"{rule['alert']}: {used - kept} dropped by aggregation"


def test_the_dashboard_is_importable_and_reads_only_exposed_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "skinscreen"
    assert dashboard["schemaVersion"] >= 36
    variables = {item["name"]: item for item in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    exposed = exposed_series()
    read: set[str] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            series = series_of(target["expr"])
            assert series <= exposed, f"{panel['title']}: {series - exposed}"
            assert 'namespace="$namespace"' in target["expr"], panel["title"]
            read |= series
    # What the issue asks the dashboard to show, by the series that show it.
    assert {
        "skinscreen_gateway_requests_total",  # throughput, errors
        "skinscreen_inference_screenings_scored_total",  # throughput by model version
        "skinscreen_gateway_request_duration_seconds_bucket",  # latency percentiles
        "skinscreen_queue_depth_tasks",  # queue depth
        "skinscreen_queue_oldest_task_age_seconds",  # queue wait
        "skinscreen_inference_queue_wait_seconds_bucket",  # queue wait
        "skinscreen_inference_batch_size_bucket",  # batch sizes
        "skinscreen_gateway_rejected_inputs_total",  # errors by reason
        "skinscreen_inference_model_info",  # model version in service, GPU/CPU provider
    } <= read
