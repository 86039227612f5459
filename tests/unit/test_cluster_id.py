"""Kafka cluster ids made by the local stack are always accepted by kafka-storage."""

from __future__ import annotations

import base64

from cryptostream.stack.kafka import new_cluster_id


def test_cluster_ids_never_look_like_an_option() -> None:
    ids = {new_cluster_id() for _ in range(2000)}  # ~60 would start with '-' if not excluded
    assert len(ids) == 2000
    for cluster_id in ids:
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
