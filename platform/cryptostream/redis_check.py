"""Start-up check of the Redis credentials, shared by the services that use Redis.

A Redis that is down is an outage the services ride out (they retry, or answer 503); a Redis
that refuses the credentials in ``CSP_REDIS_URL`` is a configuration error, reported at once
with the URL (password redacted) instead of as an endless "Redis unavailable" retry.
"""

from __future__ import annotations

import redis

from cryptostream.config import redact_url


def credentials_error(url: str, timeout: float = 5.0) -> str | None:
    """A clear message if Redis rejects the URL's credentials; None if it accepts them or does
    not answer at all (an outage, handled elsewhere)."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        return _message(url, exc)
    except redis.ResponseError as exc:  # e.g. AUTH sent to a server without a password
        if "AUTH" in str(exc).upper() or "PASS" in str(exc).upper():
            return _message(url, exc)
        raise
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    finally:
        client.close()
    return None


def _message(url: str, exc: Exception) -> str:
    return (
        f"Redis at {redact_url(url)} refused the credentials: {exc}. Set the password in "
        "CSP_REDIS_URL as redis://:PASSWORD@host:port/db (or rediss:// for TLS), or "
        "redis://USER:PASSWORD@... with Redis ACL users."
    )
