"""What an install holds is what the commands import: the image and `pip install '.[harness]'`
run every `csp` command (`csp experiment`/`csp report` once failed there with ImportError), and
the product (cryptostream, marketsim) needs nothing but the core dependencies: the `harness`
extra is the lab's (cryptostream_lab)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = [ROOT / "platform" / "cryptostream", ROOT / "simulator" / "marketsim"]
LAB = [ROOT / "platform" / "cryptostream_lab"]
OWN = {"cryptostream", "cryptostream_lab", "marketsim"}
# The tests' container backend (CSP_TEST_BACKEND=docker) imports testcontainers/docker, which
# only the dev extra installs; it says so when they are missing.
TEST_ONLY = {"platform/cryptostream_lab/backends.py"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported_modules(packages: list[Path]) -> dict[str, str]:
    """Top-level third-party module -> a file importing it (anywhere, lazily or not)."""
    found: dict[str, str] = {}
    for package in packages:
        for path in package.rglob("*.py"):
            if str(path.relative_to(ROOT)) in TEST_ONLY:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in OWN and top not in sys.stdlib_module_names:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _missing(packages: list[Path], shipped: set[str]) -> dict[str, str]:
    dists = packages_distributions()
    missing = {}
    for module, where in _imported_modules(packages).items():
        owners = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not owners & shipped and not _pulled_in(owners):
            missing[module] = where
    return missing


def _core() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_name(r) for r in project["dependencies"]}


def test_every_import_of_the_commands_is_an_installed_requirement() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    shipped = _core() | {_name(r) for r in project["optional-dependencies"]["harness"]}
    missing = _missing(PRODUCT + LAB, shipped)
    assert missing == {}, f"imported but neither a dependency nor in the harness extra: {missing}"


def test_the_product_needs_only_the_core_dependencies() -> None:
    missing = _missing(PRODUCT, _core())
    assert missing == {}, f"the product imports what only the harness extra installs: {missing}"


def _pulled_in(owners: set[str]) -> bool:
    """Installed only as a dependency of a requirement (e.g. starlette of fastapi, hiredis of
    redis[hiredis], uvloop of uvicorn[standard]): acceptable, they come with it."""
    return bool(owners & TRANSITIVE)


TRANSITIVE = {
    "starlette",
    "hiredis",
    "uvloop",
    "httptools",
    "pydantic-core",
    "annotated-types",
    "lz4",
    "cryptography",
    "numpy",
    "typing-extensions",
}


def test_the_image_installs_the_harness_extra() -> None:
    text = (ROOT / "Dockerfile").read_text()
    install = next(line for line in text.splitlines() if "tomllib" in line)
    assert "['optional-dependencies']['harness']" in install
    assert "COPY --chown=csp benchmarks/experiments ./benchmarks/experiments" in text
