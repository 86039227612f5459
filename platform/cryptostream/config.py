"""The one typed settings object, read from ``CSP_*`` environment variables.

Addresses of a running local stack (``csp stack up``) are picked up from its stack file when the
environment does not name them, so ``stack up`` in one terminal and services in others just work.
Explicit environment variables always win, which is how real clusters are configured.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from cryptostream.core.symbols import normalize_symbol


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CSP_", extra="ignore")

    # --- where things run -------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL")
    run_dir: Path = Field(Path(".run"), description="Local stack state: data, logs, stack.json")
    cache_dir: Path = Field(Path(".cache"), description="Resolved Kafka jars (git-ignored)")

    # --- topics -------------------------------------------------------------------------------
    topic: str = "raw.trades"
    dlq_topic: str = "raw.trades.dlq"
    gap_topic: str = Field("raw.trades.gaps", description="ingest's gap records (1 partition)")
    partitions: int = Field(8, ge=1)
    replication_factor: int = Field(1, ge=1)

    # --- ingest -------------------------------------------------------------------------------
    binance_ws_url: str = Field(
        "wss://stream.binance.com:9443", description="Binance WebSocket base URL"
    )
    # Comma-separated in the environment (CSP_SYMBOLS=BTCUSDT,ETHUSDT), not JSON.
    symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
    )
    max_frame_bytes: int = Field(65536, ge=1024)
    binance_rest_url: str = Field("", description="REST base for backfill; empty = derived")
    quote_asset: str = Field("", description="ingest every TRADING symbol with this quote asset")
    stream_kind: Literal["trade", "aggTrade"] = "trade"
    ingest_silence_s: float = Field(60.0, gt=0, description="a silent connection is dead")
    ingest_lifetime_s: float = Field(
        23.5 * 3600, gt=0, description="proactive reconnect age (Binance closes at 24 h)"
    )
    ingest_gap_grace_s: float = Field(1.0, ge=0, description="wait for reordered ids")
    ingest_backfill: bool = True
    ingest_tail_check_s: float = Field(
        30.0, ge=0, description="check a symbol quiet this long against REST's newest id (0 = off)"
    )
    ingest_buffer_max: int = Field(200_000, ge=100, description="trades in flight to Kafka")
    ingest_buffer_timeout_s: float = Field(2.0, ge=0, description="then overflow becomes gaps")
    ingest_metrics_port: int = Field(0, ge=0, le=65535, description="0 = no metrics server")
    ingest_resume_scan: int = Field(
        20_000, ge=0, description="records per partition read back at start to resume ids"
    )
    record_dir: Path | None = Field(None, description="record raw frames here (gzip JSON lines)")
    record_rotate_mb: float = Field(256.0, gt=0)
    record_rotate_s: float = Field(3600.0, gt=0)

    # --- processor ----------------------------------------------------------------------------
    group_id: str = "stream-processor"
    processor_kafka_client: Literal["confluent", "aiokafka"] = Field(
        "confluent", description="Kafka client library of the processor's consumer"
    )
    batch_max: int = Field(5000, ge=1, description="Records applied to Redis per round trip")
    batch_timeout_s: float = Field(0.05, gt=0)
    candle_history_minutes: int = Field(1440, ge=1, description="1m candles kept per symbol")
    processor_metrics_port: int = Field(0, ge=0, le=65535, description="0 = no metrics server")
    processor_max_future_s: float = Field(
        600.0, ge=0, description="a trade timed further after its ingest time goes to the DLQ"
    )

    # --- query --------------------------------------------------------------------------------
    query_host: str = "127.0.0.1"
    query_port: int = Field(3000, ge=0, le=65535)
    query_redis_timeout_s: float = Field(1.0, gt=0, description="Slower Redis calls answer 503")
    query_max_symbols: int = Field(100, ge=1, description="Symbols in one GET /prices call")
    query_max_candles: int = Field(500, ge=1, description="Candles in one GET /candles answer")
    query_max_stream_symbols: int = Field(1000, ge=1, description="Symbols per live-push client")
    query_push_send_timeout_s: float = Field(
        10.0, gt=0, description="A live client that blocks a push this long is dropped"
    )

    # --- archive sink and history queries (archive/, history/) -------------------------------
    archive_dir: Path = Field(Path("archive"), description="root of the Parquet trade archive")
    archive_group_id: str = Field("archive-sink", description="the archive sinks' consumer group")
    archive_scale: int = Field(8, ge=0, le=18, description="fractional digits of price/quantity")
    archive_flush_rows: int = Field(200_000, ge=1, description="buffered trades that force a flush")
    archive_flush_s: float = Field(30.0, gt=0, description="longest a trade waits for its file")
    archive_row_group_rows: int = Field(262_144, ge=1024, description="rows per Parquet row group")
    archive_retention_days: int = Field(0, ge=0, description="days of partitions kept (0 = all)")
    archive_compact_min_files: int = Field(4, ge=2, description="files per folder to compact")
    history_max_rows: int = Field(10_000, ge=1, description="trades in one /history page")
    history_max_candles: int = Field(5000, ge=1, description="candles in one ranged answer")

    # --- stack --------------------------------------------------------------------------------
    kafka_version: str = "4.3.1"
    kafka_heap: str = "512m"
    start_timeout_s: float = Field(90.0, gt=0)
    test_backend: Literal["auto", "local", "docker"] = Field(
        "auto", description="Kafka/Redis of the tests: local processes, containers, or auto"
    )

    # --- client security (real clusters; the local stack runs without) ------------------------
    # Redis: AUTH and TLS go in the URL (rediss://:password@host:6380/0); it is redacted in repr.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol of every client"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="never logged")
    kafka_ssl_ca_file: Path | None = Field(None, description="CA bundle (PEM) for SSL/SASL_SSL")

    metrics_host: str = Field("127.0.0.1", description="bind address of metrics servers")
    log_level: str = "INFO"

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """repr()/str() never show the Redis password (SecretStr fields mask themselves)."""
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "redis_url" else value

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.replace(" ", ",").split(",") if part]
        return value

    @field_validator("symbols")
    @classmethod
    def _normalize_symbols(cls, value: list[str]) -> list[str]:
        return [normalize_symbol(symbol) for symbol in value]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _StackFileSource(settings_cls))

    @property
    def stack_file(self) -> Path:
        return self.run_dir / "stack.json"


class _StackFileSource(PydanticBaseSettingsSource):
    """Addresses published by a live ``csp stack up`` (lowest priority)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        from cryptostream.stack.stackfile import read_live_stack_file

        run_dir = Path(os.environ.get("CSP_RUN_DIR", ".run"))
        return read_live_stack_file(run_dir / "stack.json")


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``, for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
