"""The processor's view of a Kafka consumer-group member: one small, synchronous interface.

The processor needs little from its Kafka client: join the group with callbacks that run between
batches (so nothing is in flight when partitions move), fetch records in batches, seek, commit
(for lag tooling only: correctness rests on the offsets stored in Redis), read the high
watermarks for lag, and read a whole topic outside the group (``rebuild``). Two backends provide
it: confluent-kafka (librdkafka; the default, faster here: ``nox -s bench_processor``) and
aiokafka (asyncio, run on a private event-loop thread).

Rebalance semantics differ by backend but not in what the processor sees: with confluent-kafka
the group is cooperative (only moving partitions are revoked), with aiokafka it is eager (every
rebalance revokes everything, then assigns). Members of one group must all use the same backend:
the group's protocols would not match.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Protocol

from cryptostream.processor.batch import RawRecord

BEGINNING: Final = -2  # a start offset meaning "the partition's first record" (librdkafka's value)


class ConsumerError(RuntimeError):
    """A consumer operation failed (seek on a partition no longer assigned, a commit refused)."""


class Listener(Protocol):
    """Rebalance callbacks. They run in the caller's thread, inside :meth:`GroupConsumer.poll`
    (or :meth:`GroupConsumer.close`), never while a batch is being applied."""

    def assigned(self, partitions: list[int]) -> dict[int, int]:
        """Partitions now ours; returns where to start each one (an offset, or ``BEGINNING``)."""
        ...

    def revoked(self, partitions: list[int]) -> None:
        """Partitions leaving (rebalance, lost membership, close): commit what was applied."""
        ...


class GroupConsumer(Protocol):
    name: str  # "confluent" | "aiokafka"
    committed: dict[int, int]  # partition -> offset Kafka acknowledged (commit callbacks)

    def subscribe(self, listener: Listener) -> None: ...

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """Wait up to ``timeout_s`` for the first record, then return it with whatever else is
        already fetched (up to ``max_records``): natural batching, no waiting for a full batch."""
        ...

    def seek(self, partition: int, offset: int) -> None: ...

    def commit(self, offsets: dict[int, int], wait: bool = False) -> None:
        """Commit ``partition -> next offset to read``; ``wait=False`` returns at once."""
        ...

    def high_watermarks(self, partitions: Iterable[int]) -> dict[int, int]:
        """Each partition's end offset as last seen by the fetcher (no request; may lack some)."""
        ...

    def assign_from_beginning(self) -> dict[int, int]:
        """Read every partition of the topic from its start, outside the group (``rebuild``);
        returns each partition's end offset at this moment."""
        ...

    def close(self) -> None:
        """Revoke (the listener commits), leave the group promptly, release the client."""
        ...
