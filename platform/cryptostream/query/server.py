"""``csp query``: serve the app with uvicorn (uvloop + httptools), one or more worker processes.

With one worker the app object is passed directly. With several, uvicorn builds the app in each
worker from an import string, so the settings travel to the workers as JSON in an environment
variable (``CSP_QUERY_SETTINGS_JSON``) that :func:`app_from_env` reads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from uvicorn.supervisors import Multiprocess

from cryptostream.config import Settings, load_settings, settings_json
from cryptostream.query.app import QueryApp, create_app
from cryptostream.query.metrics import MULTIPROC_ENV
from cryptostream.query.protocol import (
    ConnectionLimits,
    GuardedHttpToolsProtocol,
    QueryServerConfig,
)
from cryptostream.runtime import tune_gc

SETTINGS_ENV = "CSP_QUERY_SETTINGS_JSON"


def app_from_env() -> QueryApp:
    """uvicorn factory for worker processes (spawned: they set up their own JSON logging)."""
    from cryptostream.logs import setup_logging

    raw = os.environ.get(SETTINGS_ENV)
    settings = Settings.model_validate_json(raw) if raw else load_settings()
    setup_logging("query", settings.log_level, settings.log_format)
    app = create_app(settings)
    tune_gc()
    return app


def uvicorn_config(settings: Settings, workers: int = 1) -> uvicorn.Config:
    """uvloop + httptools with head limits (query.protocol), no access log (a line per request
    would cost more than serving it)."""
    app: QueryApp | str
    if workers > 1:
        os.environ[SETTINGS_ENV] = settings_json(settings)
        app = "cryptostream.query.server:app_from_env"
    else:
        app = create_app(settings)
    limits = ConnectionLimits(
        max_head_bytes=settings.query_max_header_bytes,
        head_timeout_s=settings.query_header_timeout_s,
        idle_timeout_s=settings.query_idle_timeout_s,
    )
    return QueryServerConfig(
        app,
        limits=limits,
        host=settings.query_host,
        port=settings.query_port,
        loop="uvloop",
        http=GuardedHttpToolsProtocol,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=5,
        factory=workers > 1,
        workers=workers,
    )


@contextlib.contextmanager
def shared_metrics_dir(settings: Settings) -> Iterator[Path]:
    """An empty folder where the workers' prometheus-client values meet (see query.metrics)."""
    folder = settings.run_dir / f"query-metrics-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    try:
        yield folder
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def port_error(settings: Settings) -> str | None:
    """Say so before start-up when the address is taken: uvicorn's own message would come
    amid its start-up and shutdown lines instead of last."""
    host, port = settings.query_host, settings.query_port
    if port == 0:
        return None
    try:
        with socket.create_server((host, port), reuse_port=False):
            return None
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        return (
            f"cannot listen on {host}:{port} (CSP_QUERY_HOST, CSP_QUERY_PORT): {reason}; "
            "is another query API running? Set CSP_QUERY_PORT to a free port"
        )


def main(settings: Settings, workers: int = 1) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code (1 if it never started)."""
    from cryptostream.logs import setup_logging
    from cryptostream.redis_check import credentials_error

    log = setup_logging("query", settings.log_level, settings.log_format)
    if workers < 1:
        log.error("workers must be >= 1", extra={"fields": {"workers": workers}})
        return 2
    auth_error = credentials_error(settings.redis_url) or port_error(settings)
    if auth_error is not None:
        log.error(auth_error)
        return 2
    config = uvicorn_config(settings, workers)
    log.info(
        "query API starting",
        extra={
            "fields": {
                "url.full": f"http://{settings.query_host}:{settings.query_port}",
                "workers": workers,
            }
        },
    )
    if workers > 1:
        with shared_metrics_dir(settings):
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        return 0
    tune_gc()
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0 if server.started else 1
