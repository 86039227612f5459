"""The one Kafka connection value: where the cluster is, how to authenticate, who is asking.

Every client of the project (librdkafka producers, consumers and admin clients, the aiokafka
backend, topic management, the stack's readiness probes) is configured from one
:class:`KafkaConnection`, rendered here into each library's spelling. Before, the security
settings were spelled twice and every caller of the topic checks had to remember to pass them
(the cause of a SASL start-up bug); now a client cannot be built without the whole value.

Pure: no client library is imported (aiokafka's ``create_ssl_context`` is the standard library's
default client context, built here the same way).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import SecretStr

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
DEFAULT_CLIENT_ID = "cryptostream"

# The keys of a rendered configuration that hold a secret, in either library's spelling.
SECRET_KEYS = frozenset({"sasl.password", "sasl_plain_password"})
MASK = "***"


class ClientConfig(dict[str, Any]):
    """A rendered client configuration: a plain ``dict`` to the libraries, but its repr (and so
    a log line or a traceback that shows it) masks the password."""

    def __repr__(self) -> str:
        shown = {k: MASK if k in SECRET_KEYS and v else v for k, v in self.items()}
        return repr(shown)

    __str__ = __repr__


@dataclass(frozen=True)
class KafkaConnection:
    """Bootstrap servers, security protocol, SASL credentials, the TLS trust anchor and the
    client id: everything a Kafka client needs to reach and join the cluster, and nothing about
    what it does there (group ids, fetch sizes and batching stay with each client)."""

    bootstrap: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "PLAIN"
    sasl_username: str = ""
    # SecretStr masks itself in repr(), so repr(connection) never shows the password.
    sasl_password: SecretStr = field(default=SecretStr(""))
    ssl_ca_file: Path | None = None
    client_id: str = DEFAULT_CLIENT_ID

    def __post_init__(self) -> None:
        if isinstance(self.sasl_password, str):  # an untyped caller: keep it out of repr()
            object.__setattr__(self, "sasl_password", SecretStr(self.sasl_password))
        if self.security_protocol not in get_args(SecurityProtocol):
            raise ValueError(
                f"security protocol {self.security_protocol!r}: expected one of "
                + ", ".join(get_args(SecurityProtocol))
            )
        if self.sasl_mechanism not in get_args(SaslMechanism):
            raise ValueError(
                f"SASL mechanism {self.sasl_mechanism!r}: expected one of "
                + ", ".join(get_args(SaslMechanism))
            )
        if not self.bootstrap:
            raise ValueError("a Kafka connection needs bootstrap servers")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def with_bootstrap(self, bootstrap: str) -> KafkaConnection:
        """The same credentials against other servers (e.g. one node of a local cluster)."""
        return replace(self, bootstrap=bootstrap)

    def __str__(self) -> str:
        """For messages: where, and how (never the credentials)."""
        return f"{self.bootstrap} ({self.security_protocol})"

    def librdkafka(self, extra: Mapping[str, Any] | None = None) -> ClientConfig:
        """librdkafka's properties (confluent-kafka ``Producer``/``Consumer``/``AdminClient``),
        with a client's own properties in ``extra`` (they win)."""
        config = ClientConfig(
            {
                "bootstrap.servers": self.bootstrap,
                "client.id": self.client_id,
                "security.protocol": self.security_protocol,
            }
        )
        if self.sasl:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password.get_secret_value()
        if self.tls and self.ssl_ca_file is not None:
            config["ssl.ca.location"] = str(self.ssl_ca_file)
        config.update(extra or {})
        return config

    def aiokafka(self, extra: Mapping[str, Any] | None = None) -> ClientConfig:
        """aiokafka's keyword arguments (``AIOKafkaConsumer``, ``AIOKafkaAdminClient``), with a
        client's own in ``extra``. TLS is an ``ssl.SSLContext`` there: the default client context
        (certificate and host name checked), trusting ``ssl_ca_file`` or else the system's CAs,
        exactly what librdkafka does with ``ssl.ca.location`` set or unset."""
        options = ClientConfig(
            {
                "bootstrap_servers": self.bootstrap,
                "client_id": self.client_id,
                "security_protocol": self.security_protocol,
            }
        )
        if self.sasl:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.tls:
            cafile = str(self.ssl_ca_file) if self.ssl_ca_file is not None else None
            options["ssl_context"] = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=cafile
            )
        options.update(extra or {})
        return options
