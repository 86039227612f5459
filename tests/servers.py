"""Fixtures that start a real Kafka broker or Redis server declare it here, so that every test
using one (directly or through other fixtures) is marked ``integration`` by the root conftest,
and ``-m "not integration"`` runs exactly the tests that need no server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest

F = TypeVar("F", bound=Callable[..., Any])

SERVER_FIXTURES: set[str] = set()


def server_fixture(**kwargs: Any) -> Callable[[F], F]:
    """``@pytest.fixture(**kwargs)`` for a fixture that starts Kafka or Redis."""

    def register(function: F) -> F:
        SERVER_FIXTURES.add(function.__name__)
        return pytest.fixture(**kwargs)(function)  # type: ignore[no-any-return]

    return register
