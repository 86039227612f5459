"""The Kibana dashboard charts what an operator looks for first, from fields and messages the
services really log: log rate by service and by level, errors, rebalances, dead letters."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SAVED = ROOT / "deploy" / "kibana" / "saved-objects.ndjson"
# ECS fields every service's log line has (keyword-mapped by Filebeat's index template).
AGGREGATABLE = {"@timestamp", "service.name", "log.level"}


def _objects() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAVED.read_text().splitlines() if line.strip()]


def _source_text() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "platform").rglob("*.py"))


def test_dashboard_charts_rates_errors_rebalances_and_dead_letters() -> None:
    objects = _objects()
    charts = {o["id"]: o for o in objects if o["type"] == "visualization"}
    dashboard = next(o for o in objects if o["type"] == "dashboard")
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    refs = {r["name"]: r for r in dashboard["references"]}
    shown = {refs[p["panelRefName"]]["id"] for p in panels}
    assert set(charts) <= shown, "every chart is on the dashboard"

    def split_fields(chart: dict[str, Any]) -> set[str]:
        state = json.loads(chart["attributes"]["visState"])
        return {a["params"]["field"] for a in state["aggs"] if "field" in a["params"]}

    by_field = {field: cid for cid, chart in charts.items() for field in split_fields(chart)}
    assert {"service.name", "log.level"} <= set(by_field), "log rate by service and by level"
    for chart in charts.values():
        assert split_fields(chart) <= AGGREGATABLE, chart["id"]
        assert json.loads(chart["attributes"]["visState"])["aggs"][1]["type"] == "date_histogram"
    queries = " ".join(
        json.loads(c["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"]["query"]
        for c in charts.values()
    )
    assert "log.level:(error or critical)" in queries


def test_message_filters_match_what_the_services_log() -> None:
    """A chart filtering on a message that no code logs would stay empty forever."""
    source = _source_text()
    wanted = {
        "partitions assigned",
        "partitions revoked",
        "poison record sent to the DLQ",
        "malformed frame sent to the DLQ",
    }
    found = set()
    for chart in (o for o in _objects() if o["type"] == "visualization"):
        state = json.loads(chart["attributes"]["visState"])
        for agg in state["aggs"]:
            for f in agg["params"].get("filters", []):
                for message in re.findall(r'message:"([^"]+)"', f["input"]["query"]):
                    assert f'"{message}"' in source, f"{chart['id']}: nothing logs {message!r}"
                    found.add(message)
    assert found == wanted
