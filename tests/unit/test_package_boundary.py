"""The product does not import the lab: every ``cryptostream`` module imports, and ``csp`` runs,
with ``cryptostream_lab`` unimportable (issue 15: the product no longer ships its tooling)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = [ROOT / "platform" / "cryptostream", ROOT / "simulator" / "marketsim"]
LAB = "cryptostream_lab"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_product_module_imports_the_lab() -> None:
    """Lazy imports inside functions too, which importing the modules would not find."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path) if n.split(".")[0] == LAB)
        for package in PRODUCT
        for path in sorted(package.rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_core_is_exchange_agnostic_and_pure() -> None:
    """core/ imports no exchange adapter (Binance's formats are binance/'s) and no service or
    I/O layer of the product: it is what every layer builds on."""
    above = ("binance", "ingest", "processor", "query", "archive", "history", "stack")
    offenders = {
        path.name: sorted(
            n for n in _imports(path) if n.startswith(tuple(f"cryptostream.{a}" for a in above))
        )
        for path in sorted((ROOT / "platform" / "cryptostream" / "core").glob("*.py"))
    }
    assert {name: names for name, names in offenders.items() if names} == {}


def test_settings_sit_below_every_layer() -> None:
    """config.py imports nothing from the layers that read it (it once reached up into stack/)."""
    allowed = ("cryptostream.core", "cryptostream.kafka_connection", "cryptostream.stackfile")
    names = _imports(ROOT / "platform" / "cryptostream" / "config.py")
    assert (
        sorted(n for n in names if n.startswith("cryptostream") and not n.startswith(allowed)) == []
    )


BLOCKED = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "cryptostream_lab" or name.startswith("cryptostream_lab."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    import cryptostream
    imported = []
    for info in pkgutil.walk_packages(cryptostream.__path__, "cryptostream."):
        if info.name != "cryptostream.__main__":  # runs the CLI
            importlib.import_module(info.name)
            imported.append(info.name)
    print(len(imported), "modules")

    from typer.testing import CliRunner
    from cryptostream.cli import app
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    print(result.output)
    """
)


def test_every_product_module_imports_without_the_lab() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    count = int(result.stdout.split(" modules", 1)[0])
    assert count > 50
    commands = {
        line.split()[1]
        for line in result.stdout.splitlines()
        if line.startswith("│ ") and len(line.split()) > 1 and line.split()[1].isalpha()
    }
    assert {"ingest", "processor", "query", "stack", "topics", "simulator"} <= commands
    assert not commands & {"demo", "experiment", "report"}, commands
