"""Durable timers in PostgreSQL, run by every instance without running one twice.

A timer is a row (kind, key, due_at). Each instance's runner wakes every poll interval, takes
the due rows with `FOR UPDATE SKIP LOCKED` (rows another instance holds are skipped, not waited
for) and hands them to the service's `fire` function in the same transaction; `fire` does the
work, reschedules or deletes the timers (`schedule`) and returns the events to publish through
the outbox. A timer survives restarts and crashes: until a transaction that fired it commits,
it stays due. Time comes from a `Clock`, so tests can move it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import asyncpg

from crm_shared.database import DbConnection, Migration, load_migrations, unit_of_work
from crm_shared.kafka import OutgoingRecord
from crm_shared.logging import get_logger
from crm_shared.outbox import OutboxRelay, write_outbox

log = get_logger(__name__)


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that stands still until moved (tests)."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = moment

    def advance(self, by: timedelta) -> None:
        self._now += by


@dataclass(frozen=True)
class Timer:
    kind: str
    key: str
    due_at: datetime


Fire = Callable[
    [DbConnection, Sequence[Timer], datetime], Awaitable[tuple[Sequence[OutgoingRecord], int]]
]
"""Handle due timers in the caller's transaction: returns the events to publish and how many
timers it handled (rescheduled or removed). A timer it cannot handle now (its subject is busy
in another transaction) it leaves due, for a later round."""


def migrations() -> list[Migration]:
    return load_migrations("timers", "crm_shared.timers")


async def schedule(
    conn: DbConnection, kind: str, due: Iterable[tuple[str, datetime | None]]
) -> None:
    """Set the `kind` timer of each key to its moment, or remove it (None); one statement each
    way, in the caller's transaction."""
    pending = sorted(due, key=lambda item: item[0])
    keep = [(key, at) for key, at in pending if at is not None]
    drop = [key for key, at in pending if at is None]
    if keep:
        await conn.execute(
            "INSERT INTO timers (kind, key, due_at) "
            "SELECT $1, k, d FROM unnest($2::text[], $3::timestamptz[]) AS t(k, d) "
            "ON CONFLICT (kind, key) DO UPDATE SET due_at = EXCLUDED.due_at "
            "WHERE timers.due_at IS DISTINCT FROM EXCLUDED.due_at",
            kind,
            [key for key, _ in keep],
            [at for _, at in keep],
        )
    if drop:
        await conn.execute(
            "DELETE FROM timers WHERE kind = $1 AND key = ANY($2::text[])", kind, drop
        )


class TimerRunner:
    """Fires due timers in batches, in a loop, until stopped."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        fire: Fire,
        clock: Clock,
        *,
        service: str,
        relay: OutboxRelay | None = None,
        batch_size: int = 500,
        poll_interval_s: float = 1.0,
    ) -> None:
        self._pool = pool
        self._fire = fire
        self._clock = clock
        self._service = service
        self._relay = relay
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._task: asyncio.Task[None] | None = None
        self.handled = 0
        """Timers this runner handled since it started."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self._service}-timers")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                while await self.fire_due() == self._batch_size:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the timers stay due and are tried again
                log.warning("timer round failed", error=str(exc), error_class=type(exc).__name__)
            await asyncio.sleep(self._poll_interval_s)

    async def fire_due(self) -> int:
        """Fire one batch of due timers; returns how many were handled."""
        now = self._clock.now()
        async with self._pool.acquire() as conn, unit_of_work(conn):
            rows = await conn.fetch(
                "SELECT kind, key, due_at FROM timers WHERE due_at <= $1 "
                "ORDER BY due_at, kind, key LIMIT $2 FOR UPDATE SKIP LOCKED",
                now,
                self._batch_size,
            )
            if not rows:
                return 0
            timers = [Timer(r["kind"], r["key"], r["due_at"]) for r in rows]
            records, handled = await self._fire(conn, timers, now)
            await write_outbox(conn, records)
        self.handled += handled
        if records and self._relay is not None:
            self._relay.wake()
        return handled
