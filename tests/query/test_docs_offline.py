"""/docs and /redoc work without internet: every asset comes from the query server itself."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.query.conftest import RunningService


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Refuse every connection that leaves loopback, and record the attempts."""
    attempts: list[Any] = []
    connect = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1"):
            attempts.append(address)
            raise OSError(f"network blocked by the test: {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield attempts


@pytest.mark.parametrize(
    ("page", "needed"),
    [("/docs", ["swagger-ui-bundle.js", "swagger-ui.css"]), ("/redoc", ["redoc.standalone.js"])],
)
def test_docs_page_assets_are_served_locally(
    service: RunningService, no_network: list[Any], page: str, needed: list[str]
) -> None:
    with httpx.Client(base_url=service.url, timeout=10) as http:
        html = http.get(page)
        assert html.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert {u.rsplit("/", 1)[-1] for u in urls} >= set(needed), urls
        # nothing on the page points elsewhere: no CDN, no web fonts
        assert not re.search(r"https?://", html.text), html.text
        for url in urls:
            absolute = urljoin(service.url + page, url)
            assert urlsplit(absolute).netloc == urlsplit(service.url).netloc, url
            asset = http.get(absolute)
            assert asset.status_code == 200, url
            assert len(asset.content) > 1000, url  # the real bundle, not an empty file
        spec = http.get("/openapi.json")
        assert spec.status_code == 200 and spec.json()["paths"]
    assert no_network == []
