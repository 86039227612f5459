"""Dashboards read at a glance: one kind of quantity per axis; published ports on loopback."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "pipeline.json"


def _kind(expr: str) -> str:
    """What a PromQL expression measures, as far as an axis is concerned."""
    if "histogram_quantile" in expr:
        return "duration"
    if re.search(r"rate\(.*\)\s*/\s*sum\(rate\(", expr):
        return "ratio"  # e.g. mean batch size: records per batch
    if "increase(" in expr:
        return "count per window"
    if "rate(" in expr:
        return "per second"
    return "level"


def _axis(panel: dict[str, Any], legend: str) -> str:
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        matcher = override["matcher"]
        hit = (matcher["id"] == "byName" and matcher["options"] == legend) or (
            matcher["id"] == "byRegexp" and re.fullmatch(matcher["options"], legend)
        )
        placement = [
            p["value"] for p in override["properties"] if p["id"] == "custom.axisPlacement"
        ]
        if hit and placement:
            return str(placement[0])
    return "left"


def test_every_grafana_axis_shows_one_kind_of_quantity() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    mixed = {}
    for panel in dashboard["panels"]:
        axes: dict[str, set[str]] = {}
        for target in panel.get("targets", []):
            axis = _axis(panel, target.get("legendFormat", ""))
            axes.setdefault(axis, set()).add(_kind(target["expr"]))
        bad = {axis: kinds for axis, kinds in axes.items() if len(kinds) > 1}
        if bad:
            mixed[panel["title"]] = bad
    assert mixed == {}


def test_published_ports_are_loopback_by_default() -> None:
    """The README promises loopback only; `3000:3000` would publish on every interface."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for entry in service.get("ports", []):
            resolved = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(entry))
            assert resolved.startswith("127.0.0.1:"), (name, entry)
