"""The idempotent consumer every service uses for every topic it reads.

Records come in batches. Each record is decoded (undecodable: straight to the dead letters);
then, in one database transaction per batch, the event ids are claimed in `processed_events`
(already there: a duplicate, skipped), the new events' effects are applied in order and the
events they emit are queued in the outbox. Only after that commit does FastStream commit the
Kafka offsets. A record whose effects keep failing goes to `crm.deadletter.v1` after bounded
tries, with the reason in headers, and the partition moves on; one the service refuses
(`crm_shared.errors.Refused`) goes there at once. When the database or the broker is
unreachable the record is not dead-lettered: it is rewound and tried again, so an outage never
turns good records into dead letters.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import asyncpg
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from crm_shared.contracts.envelope import dedupe_key, json_context
from crm_shared.contracts.topics import DEADLETTER
from crm_shared.contracts.touchpoints import TOUCHPOINT_ADAPTER
from crm_shared.database import DbConnection, unit_of_work
from crm_shared.errors import Refused, summary
from crm_shared.kafka import OutgoingRecord, publish_all
from crm_shared.logging import get_logger
from crm_shared.outbox import OutboxRelay, write_outbox
from crm_shared.settings import StatefulSettings

log = get_logger(__name__)

E = TypeVar("E")

LAG = Gauge(
    "crm_consumer_lag",
    "Records behind the end of the partition after the last batch",
    ["service", "consumer", "partition"],
)
RECORDS = Counter(
    "crm_consumer_records_total",
    "Records handled by a consumer, by outcome",
    ["service", "consumer", "outcome"],
)

# SQLSTATE classes that say the database cannot serve now, whatever the record: connection
# (08), insufficient resources (53), operator intervention (57, includes statement timeouts),
# system error (58), and a read-only transaction (25006: a failover to a standby).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57", "58")
_UNAVAILABLE_SQLSTATES = frozenset({"25006"})
# Transaction rollbacks (40: deadlock, serialization failure) are worth an immediate new try.
_TRANSIENT_SQLSTATE_CLASS = "40"
TRANSIENT_TRIES = 10
UNAVAILABLE_PAUSE_S = 1.0


def unavailable(exc: BaseException) -> bool:
    """A failure of the infrastructure, not of the record: rewind and retry, never dead-letter."""
    if isinstance(exc, (OSError, TimeoutError, KafkaError, asyncpg.InterfaceError)):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state[:2] in _UNAVAILABLE_SQLSTATE_CLASSES or state in _UNAVAILABLE_SQLSTATES
    return False


class Contended(Exception):
    """Raised by an effect function that found what it read changed by a concurrent
    transaction while it waited for a lock: worth an immediate new try, like a deadlock."""


def transient(exc: BaseException) -> bool:
    if isinstance(exc, Contended):
        return True
    return isinstance(exc, asyncpg.PostgresError) and (exc.sqlstate or "").startswith(
        _TRANSIENT_SQLSTATE_CLASS
    )


class Undecodable(Exception):
    """The record cannot become an event; the message says why."""


@dataclass(frozen=True)
class Received(Generic[E]):
    """A decoded record: the event and the key that makes its effects happen once."""

    event_id: str
    event: E


Decode = Callable[[ConsumerRecord[bytes, bytes]], Received[E]]
Apply = Callable[[DbConnection, E], Awaitable[Sequence[OutgoingRecord]]]
ApplyBatch = Callable[[DbConnection, Sequence[E]], Awaitable[Sequence[OutgoingRecord]]]
"""Effects of several events, in order, in the caller's transaction (one database round per
batch instead of per event); the same result as applying them one by one."""


def one_by_one(apply: Apply[E]) -> ApplyBatch[E]:
    """A batch effect function from a per-event one: the events in order, one transaction."""

    async def apply_all(conn: DbConnection, events: Sequence[E]) -> Sequence[OutgoingRecord]:
        emitted: list[OutgoingRecord] = []
        for event in events:
            emitted.extend(await apply(conn, event))
        return emitted

    return apply_all


Decoded = tuple[ConsumerRecord[bytes, bytes], Received[E]]


async def claim(conn: DbConnection, consumer: str, batch: Sequence[Received[E]]) -> list[E]:
    """Record the batch's event ids as processed by `consumer`, in the caller's transaction;
    returns the events not seen before, in order, each once (a copy later in the batch is a
    duplicate too)."""
    # Claimed in sorted order, so two consumers claiming the same ids (after a rebalance)
    # queue behind each other instead of deadlocking.
    claimed = {
        r[0]
        for r in await conn.fetch(
            "INSERT INTO processed_events (consumer, event_id) "
            "SELECT $1, id FROM unnest($2::text[]) AS id ORDER BY id "
            "ON CONFLICT DO NOTHING RETURNING event_id",
            consumer,
            sorted({received.event_id for received in batch}),
        )
    }
    fresh: list[E] = []
    for received in batch:
        if received.event_id in claimed:
            claimed.discard(received.event_id)
            fresh.append(received.event)
    return fresh


class IdempotentConsumer(Generic[E]):
    """Reads records in batches (up to `consumer_batch_size`, whatever is buffered) and applies
    each batch in one transaction. When a batch fails for a reason of its own (not an outage,
    not a deadlock), its records are tried one by one, so only a record that fails alone is
    retried and dead-lettered, and the others go through."""

    def __init__(
        self,
        *,
        name: str,
        topic: str,
        decode: Decode[E],
        apply: ApplyBatch[E],
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        relay: OutboxRelay,
        settings: StatefulSettings,
    ) -> None:
        self.name = name
        self.topic = topic
        self._decode = decode
        self._apply = apply
        self._pool = pool
        self._producer = producer
        self._relay = relay
        self._settings = settings
        self._deadletter_topic = DEADLETTER.full_name(settings.topic_prefix)
        self._subscriber: Any = None

    def subscribe(self, broker: KafkaBroker, group_id: str) -> None:
        """Register with FastStream: offsets are committed only after `handle_batch` returns;
        when it raises, every partition of the batch is rewound to its first record."""

        async def on_batch(records: Any) -> None:
            await self.handle_batch(records)

        self._subscriber = broker.subscriber(
            self.topic,
            group_id=group_id,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            batch=True,
            max_records=self._settings.consumer_batch_size,
            batch_timeout_ms=self._settings.consumer_batch_wait_ms,
            fetch_max_wait_ms=self._settings.consumer_fetch_max_wait_ms,
            # The handler gets the records as they came and decodes them itself (`decode`):
            # FastStream's own decoding would parse every body for nothing, and taking the
            # message from its context costs a hop to a worker thread for every batch.
            decoder=_records_of,
        )
        self._subscriber(on_batch)

    async def start(self) -> None:
        """Join the group (after `subscribe` and the broker's `connect`); returns once the
        group has assigned this consumer its partitions."""
        await self._subscriber.start()

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        await self.handle_batch((record,))

    async def handle_batch(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        decoded: list[Decoded[E]] = []
        for record in records:
            try:
                decoded.append((record, self._decode(record)))
            except ValidationError as exc:
                await self._dead_letter(record, summary(exc), type(exc).__name__, attempts=1)
            except Exception as exc:  # whatever else makes a record unreadable: no retry helps
                await self._dead_letter(
                    record, str(exc) or repr(exc), type(exc).__name__, attempts=1
                )
        if len(decoded) == 1:
            await self._handle_one(*decoded[0])
        elif decoded and not await self._apply_together(decoded):
            for record, received in decoded:
                await self._handle_one(record, received)
        self._measure_lag(records)

    def _measure_lag(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Records behind the end of each partition of the batch, by the end the last fetch
        saw (a broker-side figure: it needs no request of its own)."""
        consumer = getattr(self._subscriber, "consumer", None)
        if consumer is None:
            return
        last: dict[tuple[str, int], int] = {}
        for record in records:
            last[(record.topic, record.partition)] = record.offset
        for (topic, partition), offset in last.items():
            end = consumer.highwater(TopicPartition(topic, partition))
            if end is not None:
                LAG.labels(self._settings.service_name, self.name, str(partition)).set(
                    max(end - offset - 1, 0)
                )

    async def _apply_together(self, decoded: list[Decoded[E]]) -> bool:
        """The batch in one transaction, retried in place on deadlocks; False when it failed
        for a reason that may be one record's (then the caller tries them one by one)."""
        delay = self._settings.consumer_retry_backoff_s
        transient_tries = 0
        while True:
            try:
                fresh = await self._apply_once([received for _, received in decoded])
            except Exception as exc:
                if unavailable(exc) or (transient(exc) and transient_tries >= TRANSIENT_TRIES):
                    await self._pause_for_outage(exc, decoded[0][0])
                    raise
                if transient(exc):
                    transient_tries += 1
                    await asyncio.sleep(delay * transient_tries)
                    continue
                log.warning(
                    "batch failed; its records are tried one by one",
                    consumer=self.name,
                    records=len(decoded),
                    error_class=type(exc).__name__,
                )
                return False
            self._count(fresh, len(decoded))
            return True

    async def _handle_one(
        self, record: ConsumerRecord[bytes, bytes], received: Received[E]
    ) -> None:
        attempts = self._settings.consumer_max_attempts
        delay = self._settings.consumer_retry_backoff_s
        attempt = transient_tries = 0
        while True:
            try:
                fresh = await self._apply_once([received])
            except Exception as exc:
                if unavailable(exc) or (transient(exc) and transient_tries >= TRANSIENT_TRIES):
                    await self._pause_for_outage(exc, record)
                    raise
                if transient(exc):  # a deadlock or serialization failure: not the record's fault
                    transient_tries += 1
                    await asyncio.sleep(delay * transient_tries)
                    continue
                attempt += 1
                if attempt >= attempts or isinstance(exc, Refused):
                    log.error(
                        "record failed; dead-lettered",
                        consumer=self.name,
                        event_id=received.event_id,
                        error_class=type(exc).__name__,
                    )
                    await self._dead_letter(
                        record, str(exc) or repr(exc), type(exc).__name__, attempts=attempt
                    )
                    return
                RECORDS.labels(self._settings.service_name, self.name, "retried").inc()
                await asyncio.sleep(delay * 2 ** (attempt - 1))
                continue
            self._count(fresh, 1)
            return

    async def _pause_for_outage(
        self, exc: BaseException, record: ConsumerRecord[bytes, bytes]
    ) -> None:
        log.warning(
            "dependency unavailable; records will be retried",
            consumer=self.name,
            error_class=type(exc).__name__,
            partition=record.partition,
            offset=record.offset,
        )
        # Rewound and fetched again at once: pause so an outage is no busy loop.
        await asyncio.sleep(max(self._settings.consumer_retry_backoff_s, UNAVAILABLE_PAUSE_S))

    def _count(self, fresh: int, handled: int) -> None:
        service = self._settings.service_name
        if fresh:
            RECORDS.labels(service, self.name, "processed").inc(fresh)
        if handled > fresh:
            RECORDS.labels(service, self.name, "duplicate").inc(handled - fresh)

    async def _apply_once(self, batch: Sequence[Received[E]]) -> int:
        """One transaction: claim the event ids, apply the events not seen before (in order,
        each once), queue what they emit. Returns how many were new."""
        async with self._pool.acquire() as conn, unit_of_work(conn):
            fresh = await claim(conn, self.name, batch)
            if fresh:
                await write_outbox(conn, await self._apply(conn, fresh))
        if self._settings.fault_crash_point == "after_db_commit":
            log.warning(
                "fault injection: SIGKILL after database commit",
                event_ids=[received.event_id for received in batch],
            )
            os.kill(os.getpid(), signal.SIGKILL)
        if fresh:
            self._relay.wake()
        return len(fresh)

    async def _dead_letter(
        self, record: ConsumerRecord[bytes, bytes], reason: str, error_class: str, *, attempts: int
    ) -> None:
        reason_headers = {
            "error": reason[:4000],
            "error_class": error_class,
            "attempts": str(attempts),
            "source_topic": record.topic,
            "source_partition": str(record.partition),
            "source_offset": str(record.offset),
            "service": self._settings.service_name,
            "time": datetime.now(UTC).isoformat(),
        }
        # The original headers travel unchanged (bytes, nulls and repeated names), so a replay
        # can send the record exactly as it came.
        original = tuple(record.headers or ())
        await publish_all(
            self._producer,
            [
                OutgoingRecord(
                    self._deadletter_topic,
                    record.key,
                    record.value,
                    reason_headers,
                    original_headers=original,
                )
            ],
        )
        RECORDS.labels(self._settings.service_name, self.name, "dead_lettered").inc()
        log.warning(
            "record dead-lettered",
            consumer=self.name,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error_class=error_class,
        )


async def _records_of(message: Any) -> tuple[ConsumerRecord[bytes, bytes], ...]:
    raw = message.raw_message
    return raw if isinstance(raw, tuple) else (raw,)


def decode_json_event(adapter: Any) -> Decode[Any]:
    """A decoder for topics whose values are CloudEvents of `adapter`'s contract."""

    def decode(record: ConsumerRecord[bytes, bytes]) -> Received[Any]:
        if record.value is None:
            raise Undecodable("record has no value")
        event = adapter.validate_json(record.value, context=json_context(record.value))
        return Received(dedupe_key(event), event)

    return decode


def decode_touchpoint(identifier_kinds: Iterable[str]) -> Decode[Any]:
    """A decoder for `crm.touchpoints.v1`: a touchpoint whose identities name a kind this
    platform was not configured with (CRM_IDENTIFIER_KINDS) is undecodable, as ingest refuses
    it; from a producer that bypasses ingest it goes to the dead letters with that reason."""
    allowed = frozenset(identifier_kinds)
    decode = decode_json_event(TOUCHPOINT_ADAPTER)

    def checked(record: ConsumerRecord[bytes, bytes]) -> Received[Any]:
        received = decode(record)
        unknown = sorted(received.event.data.identities.other_kinds() - allowed)
        if unknown:
            configured = ", ".join(sorted(allowed)) or "none"
            raise Undecodable(
                f"data.identities.other: {', '.join(unknown)} not identifier kinds of this "
                f"platform (CRM_IDENTIFIER_KINDS: {configured})"
            )
        return received

    return checked


def decode_resolved_touchpoint(record: ConsumerRecord[bytes, bytes]) -> Received[Any]:
    """A touchpoint from `crm.touchpoints.resolved.v1`, which must name its profile."""
    received = decode_json_event(TOUCHPOINT_ADAPTER)(record)
    if received.event.profileid is None:
        raise Undecodable("resolved touchpoint without the `profileid` extension attribute")
    return received
