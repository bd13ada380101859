"""The transactional outbox: events are written with the state that caused them, in one
transaction, and a relay publishes them afterwards.

One relay per database publishes at a time (a transaction-scoped advisory lock), in outbox id
order, so events of one key reach the broker in the order they were committed. A crash between
publish and delete re-publishes rows on restart; their event ids are unchanged, so consumers
drop the copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import Counter

from crm_shared.contracts.envelope import CloudEvent
from crm_shared.database import DbConnection
from crm_shared.kafka import CLOUDEVENTS_CONTENT_TYPE, OutgoingRecord, publish_each
from crm_shared.logging import get_logger

log = get_logger(__name__)

_RELAY_LOCK = 0x43524D5F4F5554  # "CRM_OUT"

OUTBOX_PUBLISHED = Counter(
    "crm_outbox_published_total", "Outbox records published to Kafka", ["service"]
)


def event_record(topic: str, key: str | None, event: CloudEvent[Any]) -> OutgoingRecord:
    """A CloudEvent in structured mode: the JSON envelope as the value."""
    return OutgoingRecord(
        topic=topic,
        key=key.encode() if key is not None else None,
        value=event.model_dump_json(exclude_none=True).encode(),
        headers={"content-type": CLOUDEVENTS_CONTENT_TYPE},
    )


async def write_outbox(conn: DbConnection, records: Sequence[OutgoingRecord]) -> None:
    """Queue records for the relay; call inside the transaction that made them true."""
    if records:
        # One statement for the lot; rows keep the given order in their ids.
        await conn.execute(
            "INSERT INTO outbox (topic, key, value, headers) "
            "SELECT topic, key, value, headers "
            "FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::jsonb[]) "
            "WITH ORDINALITY AS r(topic, key, value, headers, n) ORDER BY n",
            [r.topic for r in records],
            [r.key for r in records],
            [r.value for r in records],
            [dict(r.headers) for r in records],
        )


class OutboxRelay:
    """Publishes outbox rows: woken after each commit, and polling as a safety net."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        *,
        service: str,
        batch_size: int = 500,
        poll_interval_s: float = 0.5,
        crash_after_publish: bool = False,
        publish_timeout_s: float = 30.0,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._service = service
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._crash_after_publish = crash_after_publish
        self._publish_timeout_s = publish_timeout_s
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self._service}-outbox-relay")

    async def stop(self) -> None:
        """Stop polling, then publish what is left once, so a clean shutdown leaves no row."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.publish_pending()
        except Exception as exc:  # the rows stay in the outbox for the next start
            log.warning("outbox flush at shutdown failed", error=str(exc))

    async def _run(self) -> None:
        backoff = self._poll_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._poll_interval_s)
            self._wakeup.clear()
            try:
                while await self.publish_pending() == self._batch_size:
                    pass
                backoff = self._poll_interval_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database away: keep the rows, try again later
                log.warning("outbox relay round failed", error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def publish_pending(self) -> int:
        """Publish one batch of rows if this instance holds the relay lock; returns how many."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _RELAY_LOCK):
                return 0
            rows = await conn.fetch(
                "SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT $1",
                self._batch_size,
            )
            if not rows:
                return 0
            acknowledged = await publish_each(
                self._producer, _records(rows), timeout=self._publish_timeout_s
            )
            if not all(acknowledged):
                # The rows stay and go again (with the same event ids) in a later round.
                raise KafkaTimeoutError(
                    f"{acknowledged.count(False)} of {len(rows)} outbox records not acknowledged"
                )
            if self._crash_after_publish:
                log.warning("fault injection: SIGKILL after outbox publish")
                os.kill(os.getpid(), signal.SIGKILL)
            await conn.execute(
                "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
        OUTBOX_PUBLISHED.labels(self._service).inc(len(rows))
        return len(rows)


def _records(rows: Iterable[asyncpg.Record]) -> list[OutgoingRecord]:
    return [
        OutgoingRecord(topic=r["topic"], key=r["key"], value=r["value"], headers=r["headers"])
        for r in rows
    ]
