"""Kafka SASL end to end: a local broker whose client listener requires SASL/PLAIN, and the
project's clients configured only through the CSP_KAFKA_* security settings."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import TopicPartition
from pydantic import SecretStr

from cryptostream.config import Settings
from cryptostream.kafka_clients import make_consumer
from cryptostream.kafka_connection import KafkaConnection
from cryptostream.stack.kafka import KafkaBroker, resolve_kafka_jars
from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream.topics import TopicError, create_topics, require_topic, required_topics
from cryptostream_lab.checker import check
from tests.conftest import Env
from tests.kafka_helpers import produce, synthetic_trades
from tests.servers import server_fixture

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


@server_fixture()
def sasl_broker(tmp_path: Path) -> Iterator[tuple[KafkaBroker, str]]:
    password = f"pw-{secrets.token_hex(8)}"
    settings = Settings()
    lib = resolve_kafka_jars(settings.cache_dir, settings.kafka_version)
    broker = KafkaBroker(
        tmp_path / "kafka-sasl",
        lib,
        heap="256m",
        sasl_users={"admin": f"admin-{secrets.token_hex(4)}", "pipeline": password},
    )
    broker.start(timeout=settings.start_timeout_s)
    try:
        yield broker, password
    finally:
        broker.stop()


def test_clients_work_through_sasl_and_fail_clearly_without(
    isolated: Env, sasl_broker: tuple[KafkaBroker, str]
) -> None:
    broker, password = sasl_broker
    env = {
        **isolated.env,
        "CSP_KAFKA_BOOTSTRAP": broker.bootstrap,
        "CSP_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "CSP_KAFKA_SASL_MECHANISM": "PLAIN",
        "CSP_KAFKA_SASL_USERNAME": "pipeline",
        "CSP_KAFKA_SASL_PASSWORD": password,
    }
    update = {
        "kafka_bootstrap": broker.bootstrap,
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "PLAIN",
        "kafka_sasl_username": "pipeline",
        "kafka_sasl_password": SecretStr(password),
    }
    settings = isolated.settings.model_copy(update=update)
    # Without credentials the admin client gets nowhere: a clear TopicError, not a hang.
    with pytest.raises(TopicError, match="cannot reach Kafka"):
        require_topic(KafkaConnection(broker.bootstrap), settings.topic, None, timeout=5)
    # The admin client, the producer and the consumers all take settings.kafka: one value.
    assert settings.kafka.sasl and settings.kafka.bootstrap == broker.bootstrap
    create_topics(settings.kafka, required_topics(settings))
    trades = synthetic_trades(SYMBOLS, 3_000, seed=51)
    assert produce(settings, trades) == len(trades)  # producer_config carries the SASL settings

    pipeline = Pipeline(
        isolated.workdir, broker.bootstrap, isolated.settings.redis_url, SYMBOLS, extra_env=env
    )
    try:
        pipeline.start_processor()
        client = redis.Redis.from_url(isolated.settings.redis_url)

        def applied() -> bool:
            pipeline.check_alive()
            return check(client, trades).ok

        wait_for(applied, 90, "the processor to apply every trade through SASL")
        client.close()
        # Ingest too: its topic checks, producer and resume read all carry the SASL settings.
        sim = pipeline.start_simulator(["--symbols", ",".join(SYMBOLS), "--rate", "500"])
        ingest = pipeline.start_ingest(sim.ws_url)
        reader = make_consumer(settings)

        def ingested() -> bool:
            assert ingest.alive(), ingest.log_tail()
            marks = [
                reader.get_watermark_offsets(TopicPartition(settings.topic, p), timeout=5)
                for p in range(settings.partitions)
            ]
            return sum(high for _low, high in marks) >= len(trades) + 500

        wait_for(ingested, 90, "ingest to publish trades through SASL")
        reader.close()
        wrong = pipeline.start_processor(CSP_KAFKA_SASL_PASSWORD=f"wrong-{secrets.token_hex(4)}")
        assert wrong.wait(90) == 2, wrong.log_tail()
        assert "cannot reach Kafka" in wrong.log_path.read_text()
    finally:
        pipeline.stop()
    for log in (isolated.workdir / "logs").glob("*.log"):
        assert password not in log.read_text(errors="replace"), f"{log.name} shows the password"
