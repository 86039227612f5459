"""``-m "not integration"`` is honest: a fixture that starts a real Kafka or Redis is declared
with ``tests.servers.server_fixture`` (whose tests the root conftest marks ``integration``),
never with a plain ``pytest.fixture`` that would leave its tests unmarked."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
STARTERS = {"RedisServer", "KafkaBroker", "KafkaCluster", "LocalStack", "start_stack"}


def _calls(node: ast.AST) -> set[str]:
    names = set()
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            func = call.func
            names.add(func.id if isinstance(func, ast.Name) else getattr(func, "attr", ""))
    return names


def _decorator(node: ast.expr) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    return ast.unparse(target)


def test_fixtures_that_start_servers_mark_their_tests() -> None:
    plain, declared = [], []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.FunctionDef) or not _calls(node) & STARTERS:
                continue
            decorators = {_decorator(d) for d in node.decorator_list}
            where = f"{path.relative_to(TESTS)}::{node.name}"
            if "server_fixture" in decorators:
                declared.append(where)
            elif decorators & {"pytest.fixture", "fixture"}:
                plain.append(where)
    assert plain == []
    assert "conftest.py::stack" in declared and "query/conftest.py::redis_server" in declared
