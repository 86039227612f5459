"""The one Kafka connection value (kafka_connection.py): the same inputs give equivalent settings
in librdkafka's and aiokafka's spelling, every client factory starts from it, the libraries
accept what it renders, and no secret shows in a repr, a message or a log line."""

from __future__ import annotations

import logging
import re
import ssl
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from cryptostream.config import KAFKA_CONNECTION_FIELDS, Settings, redact_url
from cryptostream.kafka_clients import admin_config, consumer_config, producer_config
from cryptostream.kafka_connection import KafkaConnection
from cryptostream.logs import setup_logging
from cryptostream.processor.consumers.aiokafka_backend import consumer_options
from marketsim.tls import self_signed_cert

REDIS_PASSWORD = "redis-pw-4ae1"
SASL_PASSWORD = "sasl-pw-91c3"
PLATFORM = Path(__file__).resolve().parents[2] / "platform"

# librdkafka property -> aiokafka keyword, for everything but TLS (a file path there, an
# SSLContext here: compared separately).
SAME_SETTING = {
    "bootstrap.servers": "bootstrap_servers",
    "client.id": "client_id",
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
}


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cert, _key = self_signed_cert(tmp_path_factory.mktemp("ca"))
    return cert


@pytest.fixture
def secure(tmp_path: Path, ca_file: Path) -> Settings:
    return Settings(
        redis_url=f"rediss://app:{REDIS_PASSWORD}@redis.internal:6380/0",
        kafka_bootstrap="broker-1.internal:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="pipeline",
        kafka_sasl_password=SASL_PASSWORD,  # type: ignore[arg-type]
        kafka_ssl_ca_file=ca_file,
        kafka_client_id="csp-test",
        run_dir=tmp_path,
    )


def _ca_count(context: ssl.SSLContext) -> int:
    return int(context.cert_store_stats()["x509_ca"])


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("with_ca", [True, False])
def test_both_spellings_say_the_same(
    ca_file: Path, protocol: str, mechanism: str, with_ca: bool
) -> None:
    username, password, client_id = "user 1", "pä$$ word", "csp-ingest"
    kafka = KafkaConnection(
        "b-1.example:9093,b-2.example:9093",
        security_protocol=protocol,  # type: ignore[arg-type]
        sasl_mechanism=mechanism,  # type: ignore[arg-type]
        sasl_username=username,
        sasl_password=SecretStr(password),
        ssl_ca_file=ca_file if with_ca else None,
        client_id=client_id,
    )
    rd, aio = kafka.librdkafka(), kafka.aiokafka()
    translated = {SAME_SETTING[k]: v for k, v in rd.items() if k in SAME_SETTING}
    assert translated == {k: v for k, v in aio.items() if k != "ssl_context"}
    assert set(rd) - set(SAME_SETTING) <= {"ssl.ca.location"}
    # SASL exactly with a SASL_* protocol, in both forms
    assert ("sasl.password" in rd) is protocol.startswith("SASL_")
    if protocol.startswith("SASL_"):
        assert rd["sasl.password"] == password and rd["sasl.mechanism"] == mechanism
    # TLS: a context (trusting the CA file if one is named, else the system's) exactly when
    # librdkafka speaks TLS, and the CA file named to librdkafka exactly when it is loaded.
    tls = protocol.endswith("SSL")
    assert ("ssl_context" in aio) is tls
    assert ("ssl.ca.location" in rd) is (tls and with_ca)
    if tls:
        context = aio["ssl_context"]
        assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
        if with_ca:
            assert rd["ssl.ca.location"] == str(ca_file)
            assert _ca_count(context) == 1  # that CA only, not the system store


def test_settings_give_the_connection_every_connection_field(secure: Settings) -> None:
    kafka = secure.kafka
    assert kafka == KafkaConnection(
        "broker-1.internal:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="pipeline",
        sasl_password=SecretStr(SASL_PASSWORD),
        ssl_ca_file=secure.kafka_ssl_ca_file,
        client_id="csp-test",
    )
    # each connection field changes the value (none is dropped on the way)
    changed = {
        "kafka_bootstrap": "other:1",
        "kafka_security_protocol": "SSL",
        "kafka_sasl_mechanism": "PLAIN",
        "kafka_sasl_username": "someone",
        "kafka_sasl_password": SecretStr("other"),
        "kafka_ssl_ca_file": None,
        "kafka_client_id": "other",
    }
    assert set(changed) == KAFKA_CONNECTION_FIELDS
    for name, value in changed.items():
        assert secure.model_copy(update={name: value}).kafka != kafka, name


def test_every_client_factory_starts_from_the_connection(secure: Settings) -> None:
    connection = secure.kafka.librdkafka()
    for config in (producer_config(secure), consumer_config(secure), admin_config(secure)):
        assert connection.items() <= config.items()
    aio = secure.kafka.aiokafka()
    options = consumer_options(secure)
    assert {k: v for k, v in aio.items() if k != "ssl_context"}.items() <= options.items()
    assert _ca_count(options["ssl_context"]) == 1
    assert options["group_id"] == secure.group_id and options["enable_auto_commit"] is False
    # a client's own property wins over the connection's
    assert producer_config(secure, **{"client.id": "x"})["client.id"] == "x"


def test_librdkafka_accepts_what_is_rendered(secure: Settings) -> None:
    """librdkafka validates the properties and loads the CA file when a client is created."""
    assert Producer(producer_config(secure)).flush(0) == 0  # nothing queued, nothing lost
    AdminClient(admin_config(secure))
    Consumer(consumer_config(secure)).close()
    Consumer(KafkaConnection("127.0.0.1:1").librdkafka({"group.id": "g"})).close()


def test_no_product_code_spells_a_connection_by_hand() -> None:
    """Every client's address and security come from kafka_connection.py: a client built from
    a bare bootstrap string is how the SASL start-up bug happened."""
    spelled = re.compile(r"""["']bootstrap[._]servers["']|\bbootstrap_servers\s*=""")
    offenders = [
        str(path.relative_to(PLATFORM))
        for path in PLATFORM.rglob("*.py")
        if path.name != "kafka_connection.py" and spelled.search(path.read_text())
    ]
    assert offenders == []


def test_invalid_connections_are_refused() -> None:
    with pytest.raises(ValueError, match="security protocol"):
        KafkaConnection("h:1", security_protocol="SASL")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SASL mechanism"):
        KafkaConnection("h:1", sasl_mechanism="GSSAPI")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bootstrap"):
        KafkaConnection("")


def test_repr_str_and_logs_never_show_secrets(
    secure: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # (model_dump() is data, not a log line: it keeps the URL, which is how services get it.)
    kafka = secure.kafka
    shown = [repr(secure), str(secure), repr(kafka), str(kafka)]
    shown += [repr(kafka.librdkafka()), str(kafka.aiokafka()), repr(producer_config(secure))]
    shown += [repr(consumer_options(secure)), f"{admin_config(secure)}"]
    for text in shown:
        assert REDIS_PASSWORD not in text and SASL_PASSWORD not in text, text
    assert "rediss://app:***@redis.internal:6380/0" in repr(secure)
    assert "'sasl.password': '***'" in repr(kafka.librdkafka())
    # a plain str password (an untyped caller) is wrapped, not shown
    assert "hunter2" not in repr(KafkaConnection("h:1", sasl_password="hunter2"))  # type: ignore[arg-type]
    setup_logging("test", "INFO")
    logger = logging.getLogger("cryptostream.test")
    logger.info("settings", extra={"fields": {"settings": repr(secure)}})
    logger.info("connecting to %s with %s", kafka, kafka.librdkafka())
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
