"""The Prometheus alerting rules (deploy/prometheus/alerts.yml) cannot silently rot: every
``csp_*`` metric and every label an expression names is one the services really export (read
from their metric registries, not from a list kept by hand), every rule is complete, and
prometheus.yml (and the compose file) load the rules file. No servers needed."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
INGEST = ROOT / "platform" / "cryptostream" / "ingest"
# the service's gauges() spreads the engine's: both dict literals together are what it reports
INGEST_GAUGE_SOURCES = (INGEST / "service.py", INGEST / "engine.py")

_METRIC = re.compile(r"\bcsp_[a-z0-9_]+\b")
_SELECTOR = re.compile(r"\{([^}]*)\}")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_BUILTIN = {"up"}  # scrape health, set by Prometheus itself


def _ingest_gauges() -> list[str]:
    """The gauge names ingest's service reports (the keys of the ``gauges()`` dicts)."""
    names: list[str] = []
    for source in INGEST_GAUGE_SOURCES:
        found = False
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "gauges":
                for ret in ast.walk(node):
                    if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Dict):
                        names += [k.value for k in ret.value.keys if isinstance(k, ast.Constant)]
                        found = True
        assert found, f"no gauges() returning a dict literal in {source}"
    return names


def _samples(registry: CollectorRegistry) -> tuple[set[str], set[str]]:
    names: set[str] = set()
    labels: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


def exported() -> tuple[set[str], set[str]]:
    """(metric and sample names, label names) of processor, ingest and query."""
    from cryptostream.ingest.metrics import IngestStats, MetricsServer
    from cryptostream.processor.metrics import COUNTERS, ProcessorMetrics
    from cryptostream.query.metrics import QueryMetrics

    names: set[str] = set()
    labels: set[str] = set()
    processor = ProcessorMetrics(dict.fromkeys(COUNTERS, 0), lambda: {0: 0})
    stats = IngestStats()
    for status in ("detected", "backfilled", "unrecoverable"):
        stats.gap(status, 1)
    stats.error("example")
    stats.ignored["example"] = 1
    gauges = dict.fromkeys(_ingest_gauges(), 0.0)
    ingest = MetricsServer(stats, lambda: gauges, lambda: (True, {}))
    query = QueryMetrics()
    query.price_served(200, 0.001)
    for registry in (processor.registry, ingest.registry, query.registry):
        more_names, more_labels = _samples(registry)
        names |= more_names
        labels |= more_labels
    return names, labels


def problems_of(expr: str, names: set[str], labels: set[str]) -> list[str]:
    found = []
    for metric in _METRIC.findall(expr):
        if metric not in names:
            found.append(f"unknown metric {metric}")
    used: set[str] = set()
    for selector in _SELECTOR.findall(expr):
        used |= {m.split("=")[0].strip(" !~") for m in selector.split(",") if m.strip()}
    for group in _BY.findall(expr):
        used |= {name.strip() for name in group.split(",") if name.strip()}
    for label in sorted(used - labels - {"job", "le", "instance"}):
        found.append(f"unknown label {label}")
    return found


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_metric_and_label_in_the_rules_is_exported() -> None:
    names, labels = exported()
    bad = {r["alert"]: p for r in _rules() if (p := problems_of(r["expr"], names, labels))}
    assert bad == {}


def test_the_check_can_fail() -> None:
    names, labels = exported()
    assert problems_of("rate(csp_processor_records_total[5m])", names, labels) == []
    assert problems_of("rate(csp_processor_record_total[5m])", names, labels) == [
        "unknown metric csp_processor_record_total"
    ]
    assert problems_of('max by (shard) (csp_processor_consumer_lag{x="1"})', names, labels) == [
        "unknown label shard",
        "unknown label x",
    ]


def test_rules_are_complete_and_name_real_metrics() -> None:
    rules = _rules()
    assert len({r["alert"] for r in rules}) == len(rules), "duplicate alert names"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert _METRIC.search(rule["expr"]) or "up{" in rule["expr"], rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
    # the topics the design names: consumer lag, DLQ rate, gaps, fence conflicts
    text = " ".join(r["expr"] for r in rules)
    for metric in (
        "csp_processor_consumer_lag",
        "csp_processor_poison_total",
        "csp_ingest_gap_trades_total",
        "csp_processor_conflicts_total",
    ):
        assert metric in text


def test_gap_status_values_exist_in_ingest() -> None:
    """Label values the rules match on are ones ingest writes."""
    source = "\n".join(p.read_text() for p in INGEST.glob("*.py"))
    for value in re.findall(r'status="([a-z]+)"', RULES.read_text()):
        assert f'"{value}"' in source, value


def test_prometheus_and_compose_load_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert (PROMETHEUS / config["rule_files"][0]).is_file()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
