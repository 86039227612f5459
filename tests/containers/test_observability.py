"""Metrics, dashboards and logs of a real local run, checked against the deploy/ configs.

One short run per module (simulator -> ingest -> Kafka -> processor -> Redis -> query, on the
session stack) gives the /metrics pages and the log lines the assertions use.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cryptostream.config import Settings
from cryptostream.stack.local import LocalStack
from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream.stack.supervisor import free_port
from cryptostream.topics import create_topics, required_topics
from cryptostream_lab.backends import ContainerStack
from tests.containers.conftest import APP_IMAGE, DEPLOY, environment, load_compose

pytestmark = pytest.mark.integration

# Every service that serves Prometheus metrics, and how the compose file configures its port.
METRICS_PORT_SETTINGS = {
    "ingest": "CSP_INGEST_METRICS_PORT",
    "processor": "CSP_PROCESSOR_METRICS_PORT",
    "query": "CSP_QUERY_PORT",
}
LOGGING_SERVICES = ("ingest", "processor", "query")


@dataclass
class Run:
    metrics: dict[str, str]  # service -> exposition text
    logs: dict[str, list[str]]  # service -> log lines


@pytest.fixture(scope="module")
def run(
    stack: LocalStack | ContainerStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("observability-run")
    suffix = uuid.uuid4().hex[:8]
    env = {
        "CSP_TOPIC": f"raw.trades.{suffix}",
        "CSP_DLQ_TOPIC": f"raw.trades.dlq.{suffix}",
        "CSP_GROUP_ID": f"stream-processor-{suffix}",
    }
    settings = Settings(topic=env["CSP_TOPIC"], dlq_topic=env["CSP_DLQ_TOPIC"], run_dir=workdir)
    create_topics(stack.kafka_connection, required_topics(settings))
    pipeline = Pipeline(
        workdir, stack.kafka_bootstrap, stack.redis_url, ["BTCUSDT", "ETHUSDT"], extra_env=env
    )
    metrics_port, ingest_metrics_port = free_port(), free_port()
    try:
        sim = pipeline.start_simulator(["--symbols", "BTCUSDT,ETHUSDT", "--rate", "200"])
        processes = {
            "ingest": pipeline.start_ingest(
                sim.ws_url, CSP_INGEST_METRICS_PORT=str(ingest_metrics_port)
            ),
            "processor": pipeline.start_processor(CSP_PROCESSOR_METRICS_PORT=str(metrics_port)),
        }
        query = pipeline.start_query()
        processes["query"] = query.process
        urls = {
            "ingest": f"http://127.0.0.1:{ingest_metrics_port}/metrics",
            "processor": f"http://127.0.0.1:{metrics_port}/metrics",
            "query": f"{query.base_url}/metrics",
        }
        # Data went all the way through, so the latency histograms have observations.
        wait_for(
            lambda: httpx.get(f"{query.base_url}/price/BTCUSDT", timeout=2).status_code == 200,
            timeout=20,
            what="a BTCUSDT price through the whole pipeline",
        )
        pipeline.check_alive()
        metrics = {name: httpx.get(url, timeout=5).text for name, url in urls.items()}
    finally:
        pipeline.stop()
    logs = {
        name: [line for line in process.log_path.read_text().splitlines() if line.strip()]
        for name, process in processes.items()
    }
    yield Run(metrics, logs)


def _exported_names(exposition: str) -> set[str]:
    """Every series name a scrape of this text offers PromQL (families without samples too)."""
    names: set[str] = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
    return names


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DEPLOY / "grafana/dashboards/pipeline.json").read_text())
    return doc


def _dashboard_metric_names() -> dict[str, set[str]]:
    """panel title -> the csp_* metric names its queries use."""
    return {
        panel["title"]: {
            name
            for target in panel["targets"]
            for name in re.findall(r"\b(csp_[a-z0-9_]+)\b", target["expr"])
        }
        for panel in _dashboard()["panels"]
    }


def test_metrics_of_every_service_parse(run: Run) -> None:
    for service, text in run.metrics.items():
        families = list(text_string_to_metric_families(text))
        ours = [f for f in families if f.name.startswith(f"csp_{service}_")]
        assert ours, f"{service} exports no csp_{service}_* metric"
        assert all(f.type in ("counter", "gauge", "histogram") for f in ours), service
    names = _exported_names(run.metrics["processor"])
    assert "csp_processor_records_total" in names
    records = next(
        s.value
        for f in text_string_to_metric_families(run.metrics["processor"])
        for s in f.samples
        if s.name == "csp_processor_records_total"
    )
    assert records > 0, "the run applied records, and the counter says so"


def test_grafana_dashboard_uses_only_exported_metrics(run: Run) -> None:
    exported = set().union(*(_exported_names(text) for text in run.metrics.values()))
    used = _dashboard_metric_names()
    assert all(used.values()), "every panel graphs at least one of our metrics"
    for title, names in used.items():
        missing = names - exported
        assert not missing, f"panel {title!r} uses metrics no service exports: {missing}"
    everything = set().union(*used.values())
    for topic in ("records_total", "consumer_lag", "event_to_visible_seconds_bucket"):
        assert f"csp_processor_{topic}" in everything
    assert {"csp_query_requests_total", "csp_query_request_seconds_bucket"} <= everything
    assert {"csp_ingest_acked_total", "csp_ingest_gaps_total"} <= everything


def test_dashboard_checker_catches_an_unknown_metric(run: Run) -> None:
    exported = set().union(*(_exported_names(text) for text in run.metrics.values()))
    assert "csp_processor_no_such_metric_total" not in exported
    assert "csp_query_requests" + "_bucket" not in exported  # a counter has no buckets


def test_grafana_provisioning_matches_the_dashboard_and_compose() -> None:
    datasources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    uids = {ds["uid"] for ds in datasources}
    assert {"http://prometheus:9090"} == {ds["url"] for ds in datasources}
    for panel in _dashboard()["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert all(t["datasource"]["uid"] in uids for t in panel["targets"]), panel["title"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/dashboards.yml").read_text()
    )["providers"][0]
    mounts = load_compose()["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_prometheus_scrapes_every_service_on_its_port() -> None:
    compose = load_compose()
    services = compose["services"]
    expected = {
        (name, int(environment(services[name])[setting]))
        for name, setting in METRICS_PORT_SETTINGS.items()
    }
    # Any service given a *_METRICS_PORT in compose must be scraped too.
    for name, service in services.items():
        for key, value in environment(service).items():
            if key.endswith("_METRICS_PORT"):
                expected.add((name, int(value)))
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    scraped: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                scraped.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            scraped.update((host, int(dns["port"])) for host in dns["names"])
    assert scraped == expected
    assert any(job.get("dns_sd_configs") for job in config["scrape_configs"]), (
        "scaled processors are found by DNS, not one fixed target"
    )


def _validate_ecs(line: str, service: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(line)
    assert isinstance(doc, dict)
    stamp = doc["@timestamp"]
    assert isinstance(stamp, str) and stamp.endswith("Z"), stamp
    datetime.fromisoformat(stamp.replace("Z", "+00:00"))  # ISO 8601
    assert doc["log.level"] in ("debug", "info", "warning", "error", "critical"), doc
    assert isinstance(doc["message"], str)
    assert re.fullmatch(r"\d+\.\d+\.\d+", doc["ecs.version"])
    assert doc["service"]["name"] == service
    assert isinstance(doc["process"]["pid"], int)
    assert isinstance(doc["log"]["logger"], str)
    if "error" in doc:
        assert isinstance(doc["error"], dict), "error.* is an object in ECS"
    # ECS reserves these top-level names for objects: no scalar may take them.
    for group in ("log", "service", "process", "url", "error", "event", "host"):
        assert not (group in doc and not isinstance(doc[group], dict)), (group, doc)
    return doc


def test_logs_of_a_real_run_are_ecs_documents(run: Run) -> None:
    for service in LOGGING_SERVICES:
        lines = run.logs[service]
        assert lines, f"{service} logged nothing"
        docs = [_validate_ecs(line, service) for line in lines]
        assert any(doc["log.level"] == "info" for doc in docs), service
    messages = {json.loads(line)["message"] for line in run.logs["ingest"]}
    assert "connected" in messages, "structured fields ride along: the ingest 'connected' event"
    connected = next(
        json.loads(line) for line in run.logs["ingest"] if '"message":"connected"' in line
    )
    assert connected["url"]["full"].startswith("ws://"), "url.full nests as an ECS object"


def test_ecs_validator_rejects_what_filebeat_could_not_index() -> None:
    good = (
        '{"@timestamp":"2025-01-01T00:00:00.000Z","log.level":"info","message":"m",'
        '"ecs.version":"1.6.0","log":{"logger":"x"},"process":{"pid":1},'
        '"service":{"name":"query"}}'
    )
    _validate_ecs(good, "query")
    for broken in (
        good.replace("2025-01-01T00:00:00.000Z", "yesterday"),
        good.replace('"log.level":"info",', ""),
        good.replace('"service":{"name":"query"}', '"service.name":"query"'),
        good[:-1] + ',"error":"flat"}',
        "not json",
    ):
        with pytest.raises((AssertionError, KeyError, ValueError)):
            _validate_ecs(broken, "query")


def test_filebeat_ships_our_containers_to_elasticsearch() -> None:
    config = yaml.safe_load((DEPLOY / "filebeat/filebeat.yml").read_text())
    template = config["filebeat.autodiscover"]["providers"][0]["templates"][0]
    assert template["condition"]["contains"]["docker.container.image"] == APP_IMAGE
    app_image = load_compose()["x-csp-service"]["image"]
    assert app_image.startswith(APP_IMAGE)
    inputs = template["config"][0]
    assert inputs["json.keys_under_root"] and inputs["json.expand_keys"]
    assert config["output.elasticsearch"]["hosts"] == ["elasticsearch:9200"]


def test_kibana_saved_objects_refer_to_each_other_and_to_our_fields() -> None:
    objects = [
        json.loads(line)
        for line in (DEPLOY / "kibana/saved-objects.ndjson").read_text().splitlines()
        if line.strip()
    ]
    ids = {(o["type"], o["id"]) for o in objects}
    for obj in objects:
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in ids, f"{obj['id']} refers to missing {ref}"
    searches = [o for o in objects if o["type"] == "search"]
    assert searches and any(o["type"] == "dashboard" for o in objects)
    known_fields = {"service.name", "log.level", "message", "log.logger", "error.message"}
    for search in searches:
        assert set(search["attributes"]["columns"]) <= known_fields, search["id"]
        source = json.loads(search["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        services = re.findall(r"service\.name:(\w+)", source["query"]["query"])
        assert set(services) <= set(LOGGING_SERVICES), search["id"]
    mounts = load_compose()["services"]["kibana-setup"]["volumes"]
    assert any(Path(m.split(":")[0]) == Path("./deploy/kibana") for m in mounts)
