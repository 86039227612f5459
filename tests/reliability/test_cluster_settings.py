"""``CSP_KAFKA_BROKERS`` > 1 alone gives the local stack replicated topics; explicit settings win."""

from __future__ import annotations

import pytest

from cryptostream.config import Settings
from cryptostream.topics import required_topics


@pytest.mark.parametrize(
    ("given", "rf", "min_isr"),
    [
        ({}, 1, 0),
        ({"kafka_brokers": 3}, 3, 2),
        ({"kafka_brokers": 5}, 3, 2),
        ({"kafka_brokers": 2}, 2, 1),
        ({"kafka_brokers": 3, "replication_factor": 1}, 1, 1),
        ({"kafka_brokers": 3, "min_insync_replicas": 3}, 3, 3),
    ],
)
def test_replicated_stack_defaults(given: dict[str, int], rf: int, min_isr: int) -> None:
    settings = Settings(**given)  # type: ignore[arg-type]
    assert (settings.replication_factor, settings.min_insync_replicas) == (rf, min_isr)
    for spec in required_topics(settings):
        assert spec.replication_factor == rf
        assert spec.config == ((("min.insync.replicas", str(min_isr)),) if min_isr else ())
