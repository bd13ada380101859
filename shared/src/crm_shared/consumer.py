"""The idempotent consumer every service uses for every topic it reads.

For each record: decode it (undecodable: straight to the dead letters); then, in one database
transaction, claim its event id in `processed_events` (already there: a duplicate, skipped),
apply its effects and queue the events they emit in the outbox. Only after that commit does
FastStream commit the Kafka offset. A record whose effects keep failing goes to
`crm.deadletter.v1` after bounded tries, with the reason in headers, and the partition moves
on. When the database or the broker is unreachable the record is not dead-lettered: it is
rewound and tried again, so an outage never turns good records into dead letters.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import asyncpg
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter
from pydantic import ValidationError

from crm_shared.contracts.envelope import dedupe_key, json_context
from crm_shared.contracts.topics import DEADLETTER
from crm_shared.contracts.touchpoints import TOUCHPOINT_ADAPTER
from crm_shared.database import DbConnection
from crm_shared.errors import summary
from crm_shared.kafka import OutgoingRecord, publish_all
from crm_shared.logging import get_logger
from crm_shared.outbox import OutboxRelay, write_outbox
from crm_shared.settings import StatefulSettings

log = get_logger(__name__)

E = TypeVar("E")

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


class IdempotentConsumer(Generic[E]):
    def __init__(
        self,
        *,
        name: str,
        topic: str,
        decode: Decode[E],
        apply: Apply[E],
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

    def subscribe(self, broker: KafkaBroker, group_id: str) -> None:
        """Register with FastStream: offsets are committed only after `handle` returns."""

        async def on_message(message: KafkaMessage) -> None:
            await self.handle(message.raw_message)

        broker.subscriber(
            self.topic,
            group_id=group_id,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
        )(on_message)

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            received = self._decode(record)
        except ValidationError as exc:
            await self._dead_letter(record, summary(exc), type(exc).__name__, attempts=1)
            return
        except Exception as exc:  # whatever else makes a record unreadable: no retry helps
            await self._dead_letter(record, str(exc) or repr(exc), type(exc).__name__, attempts=1)
            return

        attempts = self._settings.consumer_max_attempts
        delay = self._settings.consumer_retry_backoff_s
        attempt = transient_tries = 0
        while True:
            try:
                fresh = await self._apply_once(received)
            except Exception as exc:
                if unavailable(exc) or (transient(exc) and transient_tries >= TRANSIENT_TRIES):
                    log.warning(
                        "dependency unavailable; record will be retried",
                        consumer=self.name,
                        error_class=type(exc).__name__,
                        offset=record.offset,
                    )
                    # Rewound and fetched again at once: pause so an outage is no busy loop.
                    await asyncio.sleep(max(delay, UNAVAILABLE_PAUSE_S))
                    raise
                if transient(exc):  # a deadlock or serialization failure: not the record's fault
                    transient_tries += 1
                    await asyncio.sleep(delay * transient_tries)
                    continue
                attempt += 1
                if attempt >= attempts:
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
            RECORDS.labels(
                self._settings.service_name, self.name, "processed" if fresh else "duplicate"
            ).inc()
            return

    async def _apply_once(self, received: Received[E]) -> bool:
        """One transaction: claim the event id, apply, queue outgoing events. False: duplicate."""
        async with self._pool.acquire() as conn, conn.transaction():
            claimed = await conn.fetchval(
                "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING RETURNING true",
                self.name,
                received.event_id,
            )
            if not claimed:
                return False
            await write_outbox(conn, await self._apply(conn, received.event))
        if self._settings.fault_crash_point == "after_db_commit":
            log.warning(
                "fault injection: SIGKILL after database commit", event_id=received.event_id
            )
            os.kill(os.getpid(), signal.SIGKILL)
        self._relay.wake()
        return True

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


def decode_json_event(adapter: Any) -> Decode[Any]:
    """A decoder for topics whose values are CloudEvents of `adapter`'s contract."""

    def decode(record: ConsumerRecord[bytes, bytes]) -> Received[Any]:
        if record.value is None:
            raise Undecodable("record has no value")
        event = adapter.validate_json(record.value, context=json_context(record.value))
        return Received(dedupe_key(event), event)

    return decode


def decode_resolved_touchpoint(record: ConsumerRecord[bytes, bytes]) -> Received[Any]:
    """A touchpoint from `crm.touchpoints.resolved.v1`, which must name its profile."""
    received = decode_json_event(TOUCHPOINT_ADAPTER)(record)
    if received.event.profileid is None:
        raise Undecodable("resolved touchpoint without the `profileid` extension attribute")
    return received
