"""The asyncpg pool and the versioned SQL migration runner every stateful service uses."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from crm_shared.logging import get_logger

log = get_logger(__name__)

# What a query runs on: a plain connection, or one borrowed from the pool.
DbConnection = asyncpg.Connection | PoolConnectionProxy

_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant will do; it only has to be the same in every instance of every service.
_MIGRATION_LOCK = 0x43524D5F4D4947  # "CRM_MIG"


def _json_text(value: Any) -> str:
    """orjson (several times faster than the standard library, which profile's batches feel),
    with the standard library for what orjson refuses: keys that are not strings, integers
    beyond 64 bits."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("jsonb", "json"):
        await conn.set_type_codec(
            name, encoder=_json_text, decoder=orjson.loads, schema="pg_catalog"
        )


async def create_pool(url: str, size: int = 10) -> asyncpg.Pool:
    """A pool whose connections encode and decode json/jsonb as Python objects."""
    pool = await asyncpg.create_pool(
        url, min_size=1, max_size=size, init=_init_connection, command_timeout=60
    )
    assert pool is not None
    return pool


@dataclass(frozen=True)
class Migration:
    track: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(track: str, package: str) -> list[Migration]:
    """The numbered `NNNN_name.sql` files in `package`'s `migrations` folder, in order."""
    folder = resources.files(package).joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(track, int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations of {track} are not numbered 1..n without gaps: {versions}")
    return found


class MigrationError(RuntimeError):
    pass


async def apply_migrations(conn: DbConnection, migrations: list[Migration]) -> list[str]:
    """Apply what is new, each file in its own transaction; re-running is a no-op.

    A session advisory lock makes concurrent starts of several instances safe. An applied file
    whose text changed since is an error, not something to paper over.
    """
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   track text NOT NULL,
                   version integer NOT NULL,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (track, version))"""
        )
        rows = await conn.fetch("SELECT track, version, checksum FROM schema_migrations")
        done: dict[tuple[str, int], str] = {(r["track"], r["version"]): r["checksum"] for r in rows}
        for migration in migrations:
            key = (migration.track, migration.version)
            if key in done:
                if done[key] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.track}/{migration.version:04d}_{migration.name} "
                        "changed after it was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (track, version, name, checksum) "
                    "VALUES ($1, $2, $3, $4)",
                    migration.track,
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            applied_now.append(f"{migration.track}/{migration.version:04d}_{migration.name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    if applied_now:
        log.info("migrations applied", migrations=applied_now)
    return applied_now


def plumbing_migrations() -> list[Migration]:
    """Tables of the shared plumbing: processed events and the outbox."""
    return load_migrations("plumbing", "crm_shared")


async def migrate(url: str, migrations: list[Migration]) -> list[str]:
    conn: Any = await asyncpg.connect(url)
    try:
        return await apply_migrations(conn, migrations)
    finally:
        await conn.close()


async def lock_keys(conn: DbConnection, keys: Iterable[str]) -> None:
    """Transaction-scoped advisory locks on `keys`, always taken in one order (by hash), so two
    transactions that lock overlapping sets queue behind each other instead of deadlocking."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(h) FROM ("
        "  SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest($1::text[]) AS k ORDER BY 1"
        ") AS ordered",
        list(keys),
    )


async def try_lock_keys(conn: DbConnection, keys: Iterable[str]) -> set[str]:
    """Take what transaction-scoped advisory locks on `keys` are free now, without waiting;
    returns the keys locked. For work that may skip a busy subject and come back later."""
    rows = await conn.fetch(
        "SELECT k FROM (SELECT DISTINCT k FROM unnest($1::text[]) AS k ORDER BY k) AS keys "
        "WHERE pg_try_advisory_xact_lock(hashtextextended(k, 0))",
        list(keys),
    )
    return {r["k"] for r in rows}


_AFTER_COMMIT: ContextVar[list[Callable[[], None]] | None] = ContextVar(
    "after_commit", default=None
)


@asynccontextmanager
async def unit_of_work(conn: DbConnection) -> AsyncIterator[None]:
    """A transaction whose `after_commit` callbacks run once it committed (never when it rolls
    back): metrics count what really happened, even when a batch is retried."""
    pending: list[Callable[[], None]] = []
    token = _AFTER_COMMIT.set(pending)
    try:
        async with conn.transaction():
            yield
    finally:
        _AFTER_COMMIT.reset(token)
    for callback in pending:
        callback()


def after_commit(callback: Callable[[], None]) -> None:
    """Run `callback` when the current unit of work commits."""
    pending = _AFTER_COMMIT.get()
    if pending is None:
        raise RuntimeError("after_commit() outside a unit_of_work()")
    pending.append(callback)
