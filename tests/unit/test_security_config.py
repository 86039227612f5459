"""Client security settings: secrets never shown, the same librdkafka properties reach every
Kafka client (producer, consumer, admin), and the clients accept them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from cryptostream.config import Settings, redact_url
from cryptostream.kafka_clients import admin_config, producer_config, security_config
from cryptostream.logs import setup_logging
from cryptostream.processor.consumers.aiokafka_backend import client_options, consumer_options
from marketsim.tls import self_signed_cert

REDIS_PASSWORD = "redis-pw-4ae1"
SASL_PASSWORD = "sasl-pw-91c3"


@pytest.fixture
def secure(tmp_path: Path) -> Settings:
    cert, _key = self_signed_cert(tmp_path)
    return Settings(
        redis_url=f"rediss://app:{REDIS_PASSWORD}@redis.internal:6380/0",
        kafka_bootstrap="broker-1.internal:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="pipeline",
        kafka_sasl_password=SASL_PASSWORD,  # type: ignore[arg-type]
        kafka_ssl_ca_file=cert,
        run_dir=tmp_path,
    )


def test_repr_str_and_logs_never_show_secrets(
    secure: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # (model_dump() is data, not a log line: it keeps the URL, which is how services get it.)
    for text in (repr(secure), str(secure), f"{secure!r}"):
        assert REDIS_PASSWORD not in text and SASL_PASSWORD not in text, text
    assert "rediss://app:***@redis.internal:6380/0" in repr(secure)
    setup_logging("test", "INFO")
    logging.getLogger("cryptostream.test").info(
        "settings", extra={"fields": {"settings": repr(secure)}}
    )
    out = capsys.readouterr().out
    assert out and REDIS_PASSWORD not in out and SASL_PASSWORD not in out


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("rediss://user:pw@h:1/2", "rediss://user:***@h:1/2"),
        ("redis://h:1/0", "redis://h:1/0"),
        ("redis://user@h:1/0", "redis://user@h:1/0"),
        ("unix:///tmp/r.sock", "unix:///tmp/r.sock"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_security_properties_reach_every_client(secure: Settings) -> None:
    expected = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "pipeline",
        "sasl.password": SASL_PASSWORD,
        "ssl.ca.location": str(secure.kafka_ssl_ca_file),
    }
    assert security_config(secure) == expected
    consumer_conf = {"bootstrap.servers": secure.kafka_bootstrap, "group.id": "g"}
    for config in (producer_config(secure), admin_config(secure)):
        assert expected.items() <= config.items()
    # librdkafka accepts them (it validates the properties and loads the CA file on creation).
    Producer(producer_config(secure)).flush(0)
    AdminClient(admin_config(secure))
    Consumer({**consumer_conf, **security_config(secure)}).close()


def test_plaintext_adds_nothing_and_ssl_only_needs_the_ca(tmp_path: Path) -> None:
    assert security_config(Settings(run_dir=tmp_path)) == {}
    cert, _ = self_signed_cert(tmp_path)
    ssl = Settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=cert, run_dir=tmp_path)
    assert security_config(ssl) == {"security.protocol": "SSL", "ssl.ca.location": str(cert)}


def test_aiokafka_backend_gets_the_same_security_in_its_spelling(secure: Settings) -> None:
    options = client_options(secure)
    assert {k: v for k, v in options.items() if k != "ssl_context"} == {
        "bootstrap_servers": "broker-1.internal:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "pipeline",
        "sasl_plain_password": SASL_PASSWORD,
    }
    # The CA file was loaded into the context (a wrong path would have raised).
    assert options["ssl_context"].cert_store_stats()["x509_ca"] == 1
    consumer = consumer_options(secure)
    assert options.items() - {("ssl_context", options["ssl_context"])} <= consumer.items()
    assert consumer["group_id"] == secure.group_id and consumer["enable_auto_commit"] is False


def test_aiokafka_plaintext_has_no_sasl_or_ssl(tmp_path: Path) -> None:
    options = client_options(Settings(run_dir=tmp_path))
    assert options["security_protocol"] == "PLAINTEXT"
    assert not {"ssl_context", "sasl_mechanism", "sasl_plain_password"} & options.keys()
