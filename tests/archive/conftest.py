"""A real S3-compatible server on 127.0.0.1 for the archive's object-store tests.

moto's ``ThreadedMotoServer`` (a dev dependency) speaks the S3 REST protocol over HTTP; it runs
in a thread of the test process, started once per session and stopped by this fixture. Each
test gets its own prefix in one bucket, reached through the settings a deployment would use
(``CSP_ARCHIVE_URL``, ``CSP_ARCHIVE_S3_*``), so the same path opens the store in the tests as
in production.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs
import pytest
from pydantic import SecretStr

from cryptostream.archive.objects import ObjectRoot
from cryptostream.archive.store import archive_root
from cryptostream.config import Settings

BUCKET = "csp-archive"


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT

    def settings(self, url: str, **update: object) -> Settings:
        return Settings(
            archive_url=url,
            archive_s3_endpoint=self.endpoint,
            archive_s3_region="us-east-1",
            archive_s3_access_key_id="testing",
            archive_s3_secret_access_key=SecretStr("testing-secret"),
            **update,  # type: ignore[arg-type]
        )

    def env(self, url: str) -> dict[str, str]:
        return {
            "CSP_ARCHIVE_URL": url,
            "CSP_ARCHIVE_S3_ENDPOINT": self.endpoint,
            "CSP_ARCHIVE_S3_REGION": "us-east-1",
            "CSP_ARCHIVE_S3_ACCESS_KEY_ID": "testing",
            "CSP_ARCHIVE_S3_SECRET_ACCESS_KEY": "testing-secret",
        }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3Server(f"http://{host}:{port}")
        admin = pafs.S3FileSystem(
            access_key="testing",
            secret_key="testing-secret",
            region="us-east-1",
            scheme="http",
            endpoint_override=f"{host}:{port}",
            allow_bucket_creation=True,
        )
        admin.create_dir(BUCKET)  # what an operator does once; the sink creates no buckets
        yield s3
    finally:
        server.stop()


@pytest.fixture
def s3_url(s3_server: S3Server) -> str:
    """A fresh archive URL (its own prefix) on the session's server."""
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def s3_root(s3_server: S3Server, s3_url: str) -> ObjectRoot:
    root = archive_root(s3_server.settings(s3_url))
    assert isinstance(root, ObjectRoot)
    return root
