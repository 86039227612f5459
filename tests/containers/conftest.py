"""Helpers for the container-deployment tests: the parsed compose file and repo paths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
APP_IMAGE = "crypto-streaming-platform"

_DEFAULTED = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with no variables set: the default (or empty)."""
    return _DEFAULTED.sub(lambda m: m.group(2) or "", value)


def load_compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE form
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run this project's image (one per ``csp`` subcommand)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if str(service.get("image", "")).startswith(APP_IMAGE)
    }
