"""Each command validates and documents the settings its code reads: none may be missing from
its set in config.SERVICE_FIELDS (else a bad value would be silently replaced by the default)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cryptostream.config import KAFKA_CONNECTION_FIELDS, SERVICE_FIELDS, Settings

PLATFORM = Path(__file__).resolve().parents[2] / "platform" / "cryptostream"
# Modules whose settings reads happen inside the command (shared helpers included).
CODE = {
    "ingest": ["ingest", "kafka_clients.py", "topics.py"],
    "processor": ["processor", "kafka_clients.py", "topics.py", "redis_check.py", "core"],
    "query": ["query", "redis_check.py"],
    "topics": ["topics.py", "kafka_clients.py"],
    "stack": ["stack"],
}
TEST_ONLY = {"test_backend"}  # read by the tests' fixtures (cryptostream_lab/backends.py)


def _fields_read(parts: list[str]) -> set[str]:
    found: set[str] = set()
    for part in parts:
        path = PLATFORM / part
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            text = file.read_text()
            found |= set(re.findall(r"\bsettings\.([a-z_]+)\b", text))
            if re.search(r"\bsettings\.kafka\b", text):  # the connection value reads them all
                found |= KAFKA_CONNECTION_FIELDS
    return found & set(Settings.model_fields)


@pytest.mark.parametrize("service", sorted(CODE))
def test_a_service_validates_every_setting_its_code_reads(service: str) -> None:
    missing = _fields_read(CODE[service]) - SERVICE_FIELDS[service] - TEST_ONLY
    assert missing == set(), f"{service} reads {missing} but does not validate them"


def test_every_setting_belongs_to_some_command() -> None:
    owned = set().union(*SERVICE_FIELDS.values()) | TEST_ONLY
    assert set(Settings.model_fields) - owned == set()


def test_settings_reach_query_workers_with_their_secrets() -> None:
    """Workers get the settings as JSON (query/server.py): a password must arrive as itself, not
    as pydantic's ``**********`` mask, and every other field unchanged."""
    from cryptostream.config import settings_json

    settings = Settings(kafka_sasl_password="s3cret pass", partitions=5)  # type: ignore[arg-type]
    again = Settings.model_validate_json(settings_json(settings))
    assert again.kafka_sasl_password.get_secret_value() == "s3cret pass"
    assert again == settings
