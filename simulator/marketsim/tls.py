"""A self-signed certificate for ``wss://`` / ``https://`` on 127.0.0.1 (``openssl`` CLI)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


def self_signed_cert(directory: Path | None = None, days: int = 30) -> tuple[Path, Path]:
    """Create ``cert.pem`` and ``key.pem`` (CN/SAN localhost and 127.0.0.1); return their paths."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise OSError("--tls needs the openssl command line tool, or pass --tls-cert/--tls-key")
    d = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="marketsim-tls-"))
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            str(days),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
