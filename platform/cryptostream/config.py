"""The one typed settings object, read from ``CSP_*`` environment variables.

Addresses of a running local stack (``csp stack up``) are picked up from its stack file when the
environment does not name them, so ``stack up`` in one terminal and services in others just work.
Explicit environment variables always win, which is how real clusters are configured.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

import orjson
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from cryptostream.core.symbols import normalize_symbol
from cryptostream.kafka_connection import (
    DEFAULT_CLIENT_ID,
    KafkaConnection,
    SaslMechanism,
    SecurityProtocol,
)
from cryptostream.stackfile import read_live_stack_file

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# host:port, optionally with a listener scheme (PLAINTEXT://...), an IPv6 host in brackets.
_BOOTSTRAP_RE = re.compile(r"(?:[A-Za-z_]+://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CSP_", extra="ignore")

    # --- where things run -------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL")
    redis_cluster: bool = Field(
        False,
        description="CSP_REDIS_URL names one node of a Redis Cluster (the others are "
        "discovered); the local stack then starts a cluster of 3 masters with a replica each",
    )
    redis_cluster_nodes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="more seed nodes of the Redis Cluster than CSP_REDIS_URL's, host:port "
        "comma-separated (CSP_REDIS_URL's scheme and password apply to them): a process "
        "started while one seed is down reaches the cluster through another",
    )
    redis_cluster_node_timeout_ms: int = Field(
        5000, ge=100, description="cluster-node-timeout of the local stack's Redis Cluster"
    )
    run_dir: Path = Field(Path(".run"), description="Local stack state: data, logs, stack.json")
    cache_dir: Path = Field(Path(".cache"), description="Resolved Kafka jars (git-ignored)")
    kafka_connect_timeout_s: float = Field(
        5.0, gt=0, description="how long a command waits for Kafka's first answer before failing"
    )

    # --- topics -------------------------------------------------------------------------------
    topic: str = Field("raw.trades", description="the trades topic")
    dlq_topic: str = Field("raw.trades.dlq", description="undecodable input, with the reason")
    gap_topic: str = Field("raw.trades.gaps", description="ingest's gap records (1 partition)")
    partitions: int = Field(8, ge=1, description="partitions of the trades topic")
    replication_factor: int = Field(1, ge=1, description="replication factor of created topics")
    min_insync_replicas: int = Field(
        0, ge=0, description="min.insync.replicas of created topics (0 = the broker's default)"
    )

    # --- ingest -------------------------------------------------------------------------------
    binance_ws_url: str = Field(
        "wss://stream.binance.com:9443", description="Binance WebSocket base URL"
    )
    # Comma-separated in the environment (CSP_SYMBOLS=BTCUSDT,ETHUSDT), not JSON.
    symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["BTCUSDT", "ETHUSDT", "BNBUSDT"],
        description="symbols to ingest, comma-separated",
    )
    max_frame_bytes: int = Field(65536, ge=1024, description="larger frames go to the DLQ")
    binance_rest_url: str = Field("", description="REST base for backfill; empty = derived")
    quote_asset: str = Field("", description="ingest every TRADING symbol with this quote asset")
    stream_kind: Literal["trade", "aggTrade"] = Field("trade", description="stream kind")
    ingest_silence_s: float = Field(60.0, gt=0, description="a silent connection is dead")
    ingest_lifetime_s: float = Field(
        23.5 * 3600, gt=0, description="proactive reconnect age (Binance closes at 24 h)"
    )
    ingest_gap_grace_s: float = Field(1.0, ge=0, description="wait for reordered ids")
    ingest_backfill: bool = Field(True, description="backfill gaps from the REST API")
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
    record_rotate_mb: float = Field(256.0, gt=0, description="new recording file after MB")
    record_rotate_s: float = Field(3600.0, gt=0, description="... or after seconds")

    # --- order-book depth (ingest -> raw.depth; opt-in, trades stay the default) -------------
    depth_symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="symbols whose order book ingest publishes, comma-separated; * = every "
        "trade symbol; empty = no depth",
    )
    depth_topic: str = Field("raw.depth", description="order-book diffs and snapshots")
    depth_speed: Literal["100ms", "1000ms"] = Field(
        "100ms", description="update speed of the <symbol>@depth diff streams"
    )
    depth_snapshot_limit: int = Field(
        1000, ge=1, le=5000, description="levels per side of a REST depth snapshot"
    )
    depth_rest_weight_per_min: int = Field(
        3000, ge=1, description="REST request weight per minute depth snapshots may use"
    )

    # --- processor ----------------------------------------------------------------------------
    group_id: str = Field("stream-processor", description="the processors' consumer group")
    processor_kafka_client: Literal["confluent", "aiokafka"] = Field(
        "confluent", description="Kafka client library of the processor's consumer"
    )
    batch_max: int = Field(5000, ge=1, description="Records applied to Redis per round trip")
    batch_timeout_s: float = Field(0.05, gt=0, description="longest wait to fill a batch")
    candle_history_minutes: int = Field(1440, ge=1, description="1m candles kept per symbol")
    processor_metrics_port: int = Field(0, ge=0, le=65535, description="0 = no metrics server")
    processor_apply: Literal["auto", "batch", "partition"] = Field(
        "auto",
        description="how a fetched batch reaches Redis: one script call per fetched batch "
        "(batch: one Redis node only), one per partition, pipelined (partition: both "
        "topologies), or auto: on one node batch for small batches, partition for large ones; "
        "partition on a cluster",
    )
    processor_max_future_s: float = Field(
        600.0, ge=0, description="a trade timed further after its ingest time goes to the DLQ"
    )
    # L2 books (issue 16): off by default, so a trades-only deployment needs no depth topic
    processor_books: bool = Field(
        False, description="also apply raw.depth to the books in Redis (the topic must exist)"
    )

    # --- query --------------------------------------------------------------------------------
    query_host: str = Field("127.0.0.1", description="query API bind address")
    query_port: int = Field(3000, ge=0, le=65535, description="query API port")
    query_redis_timeout_s: float = Field(1.0, gt=0, description="Slower Redis calls answer 503")
    query_max_symbols: int = Field(100, ge=1, description="Symbols in one GET /prices call")
    query_max_candles: int = Field(500, ge=1, description="Candles in one GET /candles answer")
    query_max_stream_symbols: int = Field(1000, ge=1, description="Symbols per live-push client")
    query_max_book_depth: int = Field(
        1000, ge=1, description="Levels per side in one GET /book answer (depth's upper bound)"
    )
    query_push_send_timeout_s: float = Field(
        10.0, gt=0, description="A live client that blocks a push this long is dropped"
    )
    query_max_header_bytes: int = Field(
        16384, ge=1024, description="A longer request head answers 431 and closes the connection"
    )
    query_header_timeout_s: float = Field(
        10.0, gt=0, description="A request head not complete this long after it began is closed"
    )
    query_idle_timeout_s: float = Field(
        5.0, gt=0, description="A keep-alive connection without a new request this long is closed"
    )
    query_price_view: bool = Field(
        False,
        description="Serve GET /price from an in-process view fed by updates:price (only when "
        "the processor is the only writer of price:* keys; see query/view.py)",
    )
    query_price_view_max_lag_ms: float = Field(
        100.0, gt=0, description="The price view answers only while provably this fresh"
    )

    # --- archive sink and history queries (archive/, history/) -------------------------------
    archive_dir: Path = Field(Path("archive"), description="root of the Parquet trade archive")
    archive_url: str = Field(
        "", description="s3://bucket/prefix: the archive on an object store (empty: archive_dir)"
    )
    archive_s3_endpoint: str = Field(
        "", description="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (empty: AWS)"
    )
    archive_s3_region: str = Field("us-east-1", description="the bucket's region")
    archive_s3_access_key_id: str = Field("", description="empty: the AWS default credentials")
    archive_s3_secret_access_key: SecretStr = Field(SecretStr(""), description="never logged")
    archive_group_id: str = Field("archive-sink", description="the archive sinks' consumer group")
    archive_scale: int = Field(
        8, ge=0, le=18, description="fractional digits of price/quantity (wider if a file needs)"
    )
    archive_depth: bool = Field(
        False, description="also archive raw.depth (CSP_DEPTH_TOPIC; the topic must exist)"
    )
    archive_flush_rows: int = Field(200_000, ge=1, description="buffered trades that force a flush")
    archive_flush_s: float = Field(30.0, gt=0, description="longest a trade waits for its file")
    archive_row_group_rows: int = Field(262_144, ge=1024, description="rows per Parquet row group")
    archive_retention_days: int = Field(0, ge=0, description="days of partitions kept (0 = all)")
    archive_compact_min_files: int = Field(4, ge=2, description="files per folder to compact")
    archive_metrics_port: int = Field(0, ge=0, le=65535, description="0 = no metrics server")
    history_max_rows: int = Field(10_000, ge=1, description="trades in one /history page")
    history_max_candles: int = Field(5000, ge=1, description="candles in one ranged answer")

    # --- stack --------------------------------------------------------------------------------
    kafka_version: str = Field("4.3.1", description="Apache Kafka version of the local broker")
    kafka_heap: str = Field("512m", description="local broker heap (per node)")
    kafka_brokers: int = Field(
        1, ge=1, le=9, description="KRaft nodes of the local stack (3 = a replicated cluster)"
    )
    start_timeout_s: float = Field(90.0, gt=0, description="local broker start deadline")
    test_backend: Literal["auto", "local", "docker"] = Field(
        "auto", description="Kafka/Redis of the tests: local processes, containers, or auto"
    )

    # --- client security (real clusters; the local stack runs without) ------------------------
    # Redis: AUTH and TLS go in the URL (rediss://:password@host:6380/0); it is redacted in repr.
    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="Kafka security.protocol of every client"
    )
    kafka_sasl_mechanism: SaslMechanism = Field(
        "PLAIN", description="SASL mechanism (with a SASL_* protocol)"
    )
    kafka_sasl_username: str = Field("", description="SASL user name")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="never logged")
    kafka_ssl_ca_file: Path | None = Field(None, description="CA bundle (PEM) for SSL/SASL_SSL")
    kafka_client_id: str = Field(
        DEFAULT_CLIENT_ID, min_length=1, description="client.id of every Kafka client"
    )

    metrics_host: str = Field("127.0.0.1", description="bind address of metrics servers")
    log_level: str = Field("INFO", description="log level")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="json (ECS lines), text (human lines), auto: text on a terminal"
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """repr()/str() never show the Redis password (SecretStr fields mask themselves)."""
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "redis_url" else value

    @model_validator(mode="after")
    def _replicated_stack_defaults(self) -> Settings:
        """A local cluster (``CSP_KAFKA_BROKERS`` > 1) creates replicated topics unless told
        otherwise: replication factor 3 with ``min.insync.replicas=2`` (on 2 brokers: 2 and 1)."""
        if self.kafka_brokers > 1:
            rf = min(3, self.kafka_brokers)
            if "replication_factor" not in self.model_fields_set:
                self.replication_factor = rf
            if "min_insync_replicas" not in self.model_fields_set:
                self.min_insync_replicas = max(1, min(2, self.replication_factor - 1))
        return self

    @model_validator(mode="after")
    def _check_redis_cluster(self) -> Settings:
        """A Redis Cluster has database 0 only, runs no script across slots (so no batch-wide
        apply) and orders no pub/sub message against a PING (so no price view)."""
        if not self.redis_cluster:
            if self.redis_cluster_nodes:
                raise ValueError(
                    "CSP_REDIS_CLUSTER_NODES names seed nodes of a Redis Cluster: it needs "
                    "CSP_REDIS_CLUSTER=true (one Redis node is CSP_REDIS_URL alone)"
                )
            return self
        parts = urlsplit(self.redis_url)
        if parts.scheme == "unix" or parts.path.strip("/") not in ("", "0"):
            raise ValueError(
                "CSP_REDIS_CLUSTER=true: CSP_REDIS_URL must be redis://host:port (or /0) or "
                "rediss://...: a Redis Cluster has database 0 only, reached over TCP"
            )
        if self.processor_apply == "batch":
            raise ValueError(
                "CSP_PROCESSOR_APPLY=batch needs one Redis node: on a cluster a script call "
                "touches one hash slot, so the processor applies one call per partition"
            )
        if self.query_price_view:
            raise ValueError(
                "CSP_QUERY_PRICE_VIEW=true needs one Redis node: on a cluster, updates:price "
                "reaches the subscriber over the cluster bus, so the PING on its connection "
                "cannot prove the view has seen every write"
            )
        return self

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix") or (
            parts.scheme != "unix" and not parts.hostname
        ):
            raise ValueError("expected redis://host:port/db, rediss://... or unix:///path")
        return value

    @field_validator("redis_cluster_nodes", mode="before")
    @classmethod
    def _split_redis_nodes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _check_redis_nodes(cls, value: list[str]) -> list[str]:
        for node in value:
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in node:
                raise ValueError(
                    f"expected host:port[,host:port...], got {node!r} (the scheme and password "
                    "come from CSP_REDIS_URL)"
                )
        return value

    @property
    def apply_style(self) -> Literal["auto", "batch", "partition"]:
        """CSP_PROCESSOR_APPLY as the processor applies it: ``auto`` on a cluster is one call
        per partition (a call touches one slot); on one node the processor chooses per batch."""
        if self.processor_apply == "auto" and self.redis_cluster:
            return "partition"
        return self.processor_apply

    @property
    def redis_seeds(self) -> list[tuple[str, int]]:
        """Every seed node of the Redis Cluster: CSP_REDIS_URL's node, then the others."""
        parts = urlsplit(self.redis_url)
        first = (parts.hostname or "127.0.0.1", parts.port or 6379)
        rest = [
            (h.strip("[]"), int(p))
            for h, _, p in (n.rpartition(":") for n in self.redis_cluster_nodes)
        ]
        return [first, *(node for node in rest if node != first)]

    @field_validator("archive_dir")
    @classmethod
    def _check_archive_dir(cls, value: Path) -> Path:
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/", str(value)):
            raise ValueError("a local folder; an object store goes in CSP_ARCHIVE_URL (s3://...)")
        return value

    @field_validator("archive_url")
    @classmethod
    def _check_archive_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment):
            raise ValueError(
                "expected s3://bucket or s3://bucket/prefix (a folder: CSP_ARCHIVE_DIR)"
            )
        return value.rstrip("/")

    @field_validator("archive_s3_endpoint")
    @classmethod
    def _check_archive_s3_endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError("expected http(s)://host[:port]")
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        servers = [part.strip() for part in value.split(",")]
        if not all(_BOOTSTRAP_RE.fullmatch(server) for server in servers):
            raise ValueError("expected host:port[,host:port...]")
        return ",".join(servers)

    @field_validator("binance_ws_url")
    @classmethod
    def _check_ws_url(cls, value: str) -> str:
        if not _has_host(value, ("ws", "wss")):
            raise ValueError("expected a ws:// or wss:// URL with a host")
        return value

    @field_validator("binance_rest_url")
    @classmethod
    def _check_rest_url(cls, value: str) -> str:
        if value and not _has_host(value, ("http", "https")):
            raise ValueError("expected empty or an http:// or https:// URL with a host")
        return value

    @field_validator("symbols", "depth_symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.replace(" ", ",").split(",") if part]
        return value

    @field_validator("symbols")
    @classmethod
    def _normalize_symbols(cls, value: list[str]) -> list[str]:
        return [normalize_symbol(symbol) for symbol in value]

    @field_validator("depth_symbols")
    @classmethod
    def _normalize_depth_symbols(cls, value: list[str]) -> list[str]:
        """``*`` or ``all`` (any case) stands for every trade symbol."""
        return ["*" if s.lower() in ("*", "all") else normalize_symbol(s) for s in value]

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
    def kafka(self) -> KafkaConnection:
        """The one Kafka connection value every client and the topic checks are built from."""
        return KafkaConnection(
            bootstrap=self.kafka_bootstrap,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_ca_file=self.kafka_ssl_ca_file,
            client_id=self.kafka_client_id,
        )

    @property
    def stack_file(self) -> Path:
        return self.run_dir / "stack.json"


def _has_host(url: str, schemes: tuple[str, ...]) -> bool:
    """A URL of one of ``schemes`` with a host name that DNS can encode and a valid port."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises for a port out of range or not a number
        if parts.hostname is not None:
            parts.hostname.encode("idna")  # label too long, empty label...
    except (ValueError, UnicodeError):
        return False
    return parts.scheme in schemes and bool(parts.hostname)


class _StackFileSource(PydanticBaseSettingsSource):
    """Addresses published by a live ``csp stack up`` (lowest priority)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        run_dir = Path(os.environ.get("CSP_RUN_DIR", ".run"))
        values = read_live_stack_file(run_dir / "stack.json")
        named = {key.upper() for key in os.environ}
        if named & {"CSP_REDIS_URL", "CSP_REDIS_CLUSTER"}:  # another Redis: not its seeds
            values.pop("redis_cluster_nodes", None)
        return values


def settings_json(settings: Settings) -> str:
    """The settings as JSON for a child process of the same service (query workers), secrets
    included: ``model_dump_json()`` writes every SecretStr as the literal ``**********``, which
    a worker would then use as the password."""
    doc = settings.model_dump(mode="json")
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            doc[name] = value.get_secret_value()
    return orjson.dumps(doc).decode()


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


class ConfigError(ValueError):
    """Invalid settings: one line per problem, each naming the variable, its value and what is
    expected (a traceback would name pydantic's internals, not the user's mistake)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# What each command reads, so that it validates (and documents in --help) only those variables:
# a typo in a processor setting must not stop the query API. A new ingest_/processor_/query_
# setting belongs to its service by its prefix; tests/unit/test_service_settings.py checks that
# every `settings.<field>` a service's code reads is in its set.
_COMMON = frozenset({"run_dir", "log_level", "log_format"})
# what Settings.kafka reads: a service that builds any Kafka client validates all of them
KAFKA_CONNECTION_FIELDS = frozenset(
    {
        "kafka_bootstrap",
        "kafka_security_protocol",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_ca_file",
        "kafka_client_id",
    }
)
_KAFKA = KAFKA_CONNECTION_FIELDS | {"kafka_connect_timeout_s", "group_id"}
# where the archive is (archive/objects.py): every reader of it needs these
_ARCHIVE_WHERE = frozenset(
    {
        "archive_dir",
        "archive_url",
        "archive_s3_endpoint",
        "archive_s3_region",
        "archive_s3_access_key_id",
        "archive_s3_secret_access_key",
    }
)
_TOPICS = frozenset(
    {
        "topic",
        "dlq_topic",
        "gap_topic",
        "partitions",
        "replication_factor",
        "min_insync_replicas",
        "depth_topic",
    }
)
SERVICE_FIELDS: dict[str, frozenset[str]] = {
    "ingest": _COMMON
    | _KAFKA
    | _TOPICS
    | {
        "binance_ws_url",
        "binance_rest_url",
        "symbols",
        "quote_asset",
        "stream_kind",
        "max_frame_bytes",
        "group_id",
        "metrics_host",
        "record_dir",
        "record_rotate_mb",
        "record_rotate_s",
        *(name for name in Settings.model_fields if name.startswith(("ingest_", "depth_"))),
    },
    "processor": _COMMON
    | _KAFKA
    | _TOPICS
    | {
        "redis_url",
        "redis_cluster",
        "redis_cluster_nodes",
        "group_id",
        "batch_max",
        "batch_timeout_s",
        "candle_history_minutes",
        "metrics_host",
        *(name for name in Settings.model_fields if name.startswith("processor_")),
    },
    "query": _COMMON
    | _ARCHIVE_WHERE
    | {
        "redis_url",
        "redis_cluster",
        "redis_cluster_nodes",
        "partitions",
        *(n for n in Settings.model_fields if n.startswith(("query_", "history_"))),
    },
    "archive": _COMMON
    | _KAFKA
    | _TOPICS
    | {
        "metrics_host",
        *(name for name in Settings.model_fields if name.startswith("archive_")),
    },
    "history": _COMMON
    | _ARCHIVE_WHERE
    | {"archive_scale", *(n for n in Settings.model_fields if n.startswith("history_"))},
    "topics": _COMMON | _KAFKA | _TOPICS | {"replication_factor"},
    "stack": _COMMON
    | _TOPICS
    | {
        "replication_factor",
        "cache_dir",
        "kafka_version",
        "kafka_heap",
        "start_timeout_s",
        "kafka_connect_timeout_s",
        "kafka_brokers",
        "redis_cluster",
        "redis_cluster_node_timeout_ms",
    },
}
SERVICE_FIELDS["rebuild"] = SERVICE_FIELDS["processor"]

# CSP_* variables that are not settings but are read on purpose (internal hand-overs).
_NOT_SETTINGS = frozenset({"CSP_QUERY_SETTINGS_JSON"})


def env_name(field: str) -> str:
    return f"CSP_{field.upper()}"


def load_settings(service: str | None = None, **overrides: Any) -> Settings:
    """The settings, or :class:`ConfigError`. With ``service``, an invalid variable that service
    does not read is left at its default instead of failing the start."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        errors = exc.errors()
    except SettingsError as exc:  # a value the environment source could not even decode
        raise ConfigError([str(exc)]) from None
    used = SERVICE_FIELDS.get(service or "", frozenset(Settings.model_fields))
    problems: list[str] = []
    defaults: dict[str, Any] = {}
    for error in errors:
        field = str(error["loc"][0]) if error["loc"] else ""
        if field in Settings.model_fields and field not in used:
            defaults[field] = Settings.model_fields[field].get_default(call_default_factory=True)
        else:
            problems.append(_describe(field, error))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return Settings(**{**defaults, **overrides})


def _describe(field: str, error: Any) -> str:
    """``CSP_PARTITIONS='abc': expected an integer >= 1 (partitions of the trades topic)``."""
    name = env_name(field) if field else "CSP_*"
    raw = env_value(name)
    value = raw if raw is not None else error.get("input")
    if field == "kafka_sasl_password":
        shown = "'***'"
    elif field == "redis_url" and isinstance(value, str):
        shown = repr(redact_url(value))
    else:
        shown = repr(value if not isinstance(value, str) or len(value) <= 60 else value[:60] + "…")
    info = Settings.model_fields.get(field)
    if error["type"] == "value_error":  # our validators: their message says what is expected
        expected = str(error["msg"]).removeprefix("Value error, ")
    else:
        expected = f"expected {_expected(field)}"
    meaning = f" ({info.description})" if info is not None and info.description else ""
    return f"{name}={shown}: {expected}{meaning}"


def env_value(name: str) -> str | None:
    """The environment's value of a variable, matched case-insensitively as pydantic does."""
    for key, value in os.environ.items():
        if key.upper() == name:
            return value
    return None


def _expected(field: str) -> str:
    """What a field accepts, in words, from its type and constraints."""
    info = Settings.model_fields.get(field)
    if info is None:
        return "a valid value"
    annotation = info.annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    kind = annotation if not args or get_origin(annotation) is list else args[0]
    words = {int: "an integer", float: "a number", bool: "true or false", Path: "a path"}
    text = words.get(kind, "a string") if isinstance(kind, type) else "a valid value"
    bounds = []
    for item in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                bounds.append(f"{sign} {getattr(item, attr)}")
    return text + (" " + " and ".join(bounds) if bounds else "")


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per ``CSP_*`` variable that no setting reads (a typo is otherwise silent)."""
    known = {env_name(name) for name in Settings.model_fields} | _NOT_SETTINGS
    warnings = []
    for key in sorted(os.environ if environ is None else environ):
        upper = key.upper()
        if upper.startswith("CSP_") and upper not in known:
            close = difflib.get_close_matches(upper, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warnings.append(f"{key} is not a setting{hint}; ignored")
    return warnings


def describe_settings(service: str | None = None) -> list[tuple[str, str, str]]:
    """(variable, default, meaning) of what ``service`` reads (every setting when None)."""
    used = SERVICE_FIELDS.get(service or "", frozenset(Settings.model_fields))
    rows = []
    for name, info in Settings.model_fields.items():
        if name in used:
            default = info.get_default(call_default_factory=True)
            rows.append((env_name(name), _format_value(default), info.description or ""))
    return rows


def _format_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "***" if value.get_secret_value() else ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def effective_settings(settings: Settings) -> list[tuple[str, str]]:
    """(variable, value) of every setting, secrets masked: what ``csp config`` prints."""
    rows = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        shown = redact_url(value) if name == "redis_url" else _format_value(value)
        rows.append((env_name(name), shown))
    return rows
