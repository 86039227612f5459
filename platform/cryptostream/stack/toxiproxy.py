"""Toxiproxy (Shopify's TCP fault proxy) for network-fault scenarios: built once from its Go
module, run as a supervised child on 127.0.0.1, driven through its HTTP API.

:func:`ensure_toxiproxy` runs ``go install github.com/Shopify/toxiproxy/v2/cmd/server@<pinned>``
into the git-ignored cache folder (only the Go toolchain and the Go module proxy are needed);
:class:`ToxiproxyServer` starts it; :class:`ToxiproxyClient` creates proxies and toxics
(latency, jitter, reset_peer, timeout = a black hole...). ``python -m cryptostream.stack.toxiproxy``
installs it (the nox sessions call this) and prints the binary's path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from cryptostream.stack.supervisor import ManagedProcess, StackError, free_port

TOXIPROXY_VERSION = "v2.12.0"
MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"
Stream = Literal["upstream", "downstream"]


def ensure_toxiproxy(cache_dir: Path, version: str = TOXIPROXY_VERSION) -> Path:
    """The ``toxiproxy-server`` binary of ``version``, built into ``cache_dir`` on first use."""
    folder = cache_dir.resolve() / f"toxiproxy-{version}"
    binary = folder / "toxiproxy-server"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    go = shutil.which("go")
    if go is None:
        raise StackError(
            "the Go toolchain (`go`) is needed once to build Toxiproxy from its module "
            f"({MODULE}@{version}, through the Go module proxy) and is not on PATH "
            "(https://go.dev/dl/, or Debian: apt-get install golang)."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix="toxiproxy-build-") as tmp:
        env = {**os.environ, "GOBIN": tmp, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
        result = subprocess.run(
            [go, "install", f"{MODULE}@{version}"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=900,
        )
        built = Path(tmp) / "server"
        if result.returncode != 0 or not built.is_file():
            output = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise StackError(f"`go install {MODULE}@{version}` failed:\n{output}")
        staging = Path(tmp) / "out"
        staging.mkdir()
        built.rename(staging / "toxiproxy-server")
        if binary.is_file():  # a concurrent build won the race; theirs is as good as ours
            return binary
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    return binary


@dataclass
class Proxy:
    name: str
    listen: str  # host:port clients connect to
    upstream: str  # host:port the proxy forwards to

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class ToxiproxyClient:
    """The few calls of Toxiproxy's HTTP API the scenarios use (typed, no extra dependency)."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout)

    def _ok(self, reply: httpx.Response) -> Any:
        if reply.status_code >= 400:
            raise StackError(
                f"Toxiproxy {reply.request.method} {reply.request.url.path}: "
                f"{reply.status_code} {reply.text[:300]}"
            )
        return reply.json() if reply.content else None

    def version(self) -> str:
        return self.http.get("/version").text.strip()

    def create_proxy(self, name: str, upstream: str, listen: str = "127.0.0.1:0") -> Proxy:
        doc = self._ok(
            self.http.post(
                "/proxies",
                json={
                    "name": name,
                    "listen": listen,
                    "upstream": upstream,
                    "enabled": True,
                },
            )
        )
        return Proxy(doc["name"], doc["listen"], doc["upstream"])

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Disabling closes every connection through the proxy and refuses new ones."""
        self._ok(self.http.post(f"/proxies/{name}", json={"enabled": enabled}))

    def add_toxic(
        self,
        proxy: str,
        kind: str,
        attributes: dict[str, int | float],
        *,
        stream: Stream = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
    ) -> str:
        """``kind``: latency {latency, jitter} (ms), timeout {timeout} (ms; 0 = a black hole
        until removed), reset_peer {timeout} (TCP RST after ms), bandwidth {rate} (KB/s)..."""
        toxic = name or f"{kind}_{stream}"
        self._ok(
            self.http.post(
                f"/proxies/{proxy}/toxics",
                json={
                    "name": toxic,
                    "type": kind,
                    "stream": stream,
                    "toxicity": toxicity,
                    "attributes": attributes,
                },
            )
        )
        return toxic

    def remove_toxic(self, proxy: str, toxic: str) -> None:
        self._ok(self.http.delete(f"/proxies/{proxy}/toxics/{toxic}"))

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._ok(self.http.get(f"/proxies/{proxy}/toxics"))
        return result

    def reset(self) -> None:
        """Every proxy enabled again, every toxic removed."""
        self._ok(self.http.post("/reset"))

    def close(self) -> None:
        self.http.close()


@dataclass
class ToxiproxyServer:
    workdir: Path
    binary: Path
    port: int = 0
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ToxiproxyServer:
        self.port = self.port or free_port()
        self.process = ManagedProcess(
            "toxiproxy",
            [str(self.binary), "-host", "127.0.0.1", "-port", str(self.port)],
            log_path=self.workdir / "toxiproxy.log",
        ).start()
        self.process.wait_until(
            lambda: httpx.get(f"{self.url}/version", timeout=1).status_code == 200,
            timeout=timeout,
            what="an answer on /version",
        )
        return self

    def client(self) -> ToxiproxyClient:
        return ToxiproxyClient(self.url)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=5)

    def __enter__(self) -> ToxiproxyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    """Install (if needed) and print the binary's path; ``CSP_CACHE_DIR`` names the cache."""
    from cryptostream.config import load_settings

    try:
        print(ensure_toxiproxy(load_settings("stack").cache_dir))
    except StackError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
