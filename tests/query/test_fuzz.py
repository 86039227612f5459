"""Property-based fuzzing of the live service against its own OpenAPI schema (schemathesis).

Every documented operation is called with generated valid and invalid input; the checks
require no 5xx, documented status codes and content types, and bodies that match the schema.
Redis holds a few symbols (the schema's examples among them) so success paths are reached too.
``/stream/prices`` and ``/stream/books`` are left out: an endless stream has no response to
validate (their behaviour is covered in test_push.py and test_books.py).
"""

from __future__ import annotations

import time

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES
from schemathesis.generation import GenerationMode
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.query.conftest import RunningService, put_candle, put_price, put_stats
from tests.query.test_books import put_book

MINUTE = 60_000
MAX_EXAMPLES = 100


@pytest.fixture
def api_schema(service: RunningService, r: redis.Redis) -> OpenApiSchema:
    now = int(time.time() * 1000)
    for i, symbol in enumerate(["BTCUSDT", "ETHUSDT", "AB", "A1"]):
        put_price(r, symbol, f"{100 + i}.25000000", trade_id=i + 1)
        put_stats(r, symbol, 10 + i, "1.5", "150.75")
        put_book(r, symbol, [("100.5", "1"), ("9.99", "2")], [("101", "3")], last_update_id=i + 1)
        for m in range(30):
            t = now - now % MINUTE - m * MINUTE
            put_candle(r, symbol, t, "1.0", "2.5", "0.5", "1.5", "3.00000001", "4.5", m + 1)
    # An oversized query string is rejected by the server's head limit (431) before any route.
    rejection = [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "431"]
    config = SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": rejection}}}
    )
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json", config=config)
    return schema.exclude(path_regex="^/stream/")


def _operations(schema: OpenApiSchema) -> list[APIOperation]:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_schema(api_schema: OpenApiSchema, mode: GenerationMode) -> None:
    """Each operation, valid then invalid input: no 5xx, no undocumented status or shape.

    (schemathesis' pytest loader ``from_fixture`` does not work with this pytest, so the
    operations' hypothesis strategies are driven directly.)
    """
    operations = _operations(api_schema)
    assert len(operations) >= 9
    for operation in operations:
        if (
            mode is GenerationMode.NEGATIVE
            and not operation.path_parameters
            and not operation.query
        ):
            continue  # nothing to get wrong

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate()

        check()
