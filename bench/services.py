"""What the benchmarks that run services share: fresh topics and databases per measurement,
service processes with their logs, CPU groups, publishing a load and waiting for it to drain,
and cleaning up after themselves."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from tests.support import Endpoints, ServiceProcess, free_port, service_env, wait_until

from common import (
    BenchFailure,
    CpuGroups,
    children_of,
    create_database,
    describe,
    drop_databases,
    endpoints_from_environment,
    fixed,
    local_broker_pid,
    write_section,
)
from crm_shared.kafka import create_topics, publish_each

PARTITIONS = 12  # the production default (CRM_TOPIC_PARTITIONS)
UNLIMITED = {"CRM_RATE_LIMIT_EVENTS_PER_S": "100000000", "CRM_RATE_LIMIT_BURST": "100000000"}


@dataclass
class ServiceRun:
    """One benchmark run: where things are, and what it started and created."""

    endpoints: Endpoints
    args: argparse.Namespace
    work: Path
    name: str
    prefix: str = ""
    databases: list[str] = field(default_factory=list)
    processes: list[ServiceProcess] = field(default_factory=list)
    postmaster: int | None = None

    def __post_init__(self) -> None:
        self.prefix = self.prefix or f"bench-{self.name}-{uuid.uuid4().hex[:8]}-"

    async def fresh(self, label: str) -> tuple[str, str]:
        """New topics and a new database for one measurement: (topic prefix, database URL)."""
        prefix = f"{self.prefix}{label}."
        await create_topics(self.endpoints.bootstrap, prefix=prefix, partitions=PARTITIONS)
        name, url = await create_database(self.endpoints.database_server, self.name)
        self.databases.append(name)
        return prefix, url

    def env(self, prefix: str, url: str | None = None) -> dict[str, str]:
        env = {**service_env(self.endpoints, prefix, url), **UNLIMITED}
        # The tests shorten these for speed; the figures describe the shipped defaults.
        env.pop("CRM_OUTBOX_POLL_INTERVAL_S", None)
        env.pop("CRM_CONSUMER_RETRY_BACKOFF_S", None)
        return env

    def start(self, module: str, env: dict[str, str], label: str) -> ServiceProcess:
        process = ServiceProcess(module, env, free_port(), self.work / f"{label}.log")
        process.start()
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        self.processes = []

    def cpu_groups(self, services: dict[str, list[ServiceProcess]]) -> CpuGroups:
        groups = CpuGroups()
        for name, processes in services.items():
            groups.groups[name] = fixed([p.process.pid for p in processes if p.process])
        if self.postmaster is not None:
            root = self.postmaster
            groups.groups["postgres"] = lambda: [root, *children_of(root)]
        broker = local_broker_pid()
        if broker is not None:
            groups.groups["broker"] = fixed([broker])
        groups.groups["bench"] = fixed([os.getpid()])
        return groups

    async def cleanup(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.endpoints.bootstrap)
        await admin.start()
        try:
            ours = [t for t in await admin.list_topics() if t.startswith(self.prefix)]
            if ours:
                await admin.delete_topics(ours)
        finally:
            await admin.close()
        await drop_databases(self.endpoints.database_server, self.databases)
        self.databases.clear()

    async def tidy(self) -> None:
        """Delete a finished measurement's topics and database (unless --keep), so the next
        one shares the machine with neither: the broker holds topics in memory, and PostgreSQL
        would vacuum and analyse the finished database during the next measurement."""
        if not self.args.keep:
            await self.cleanup()


async def publish(bootstrap: str, records: Any) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        acknowledged = await publish_each(producer, records, timeout=120)
    finally:
        await producer.stop()
    if not all(acknowledged):
        raise BenchFailure(f"{acknowledged.count(False)} records not acknowledged")


async def progress(conn: asyncpg.Connection, processes: list[ServiceProcess]) -> tuple[int, int]:
    """Records the processes handled (their own counters: counting the claims in the database
    would read the whole table on every poll) and whether outbox rows wait to be published."""
    handled = 0.0
    for process in processes:
        for outcome in ("processed", "duplicate"):
            handled += await process.metric("crm_consumer_records_total", outcome=outcome)
    # By the primary key: a plain LIMIT 1 reads the heap from its start, through every row the
    # relay deleted and vacuum has not yet reclaimed (7 ms a poll, PostgreSQL's CPU the bench
    # would have charged to the service).
    first = await conn.fetchval("SELECT id FROM outbox ORDER BY id LIMIT 1")
    return int(handled), int(first is not None)


async def drained(
    conn: asyncpg.Connection, processes: list[ServiceProcess], expected: int, timeout: float
) -> None:
    """Poll until `expected` records are handled and the outbox is empty."""

    async def done() -> bool:
        handled, queued = await progress(conn, processes)
        return handled >= expected and queued == 0

    try:
        await wait_until(done, timeout=timeout, interval=0.1, what="the records")
    except AssertionError as exc:
        handled, queued = await progress(conn, processes)
        raise BenchFailure(
            f"{handled} of {expected} records handled, outbox rows left: {queued > 0}"
        ) from exc


R = TypeVar("R", bound=ServiceRun)


def run_bench(
    name: str,
    args: argparse.Namespace,
    make_run: Callable[[Endpoints, argparse.Namespace, Path], R],
    bench: Callable[[R], Coroutine[Any, Any, None]],
    render: Callable[[R, datetime, float], str],
) -> int:
    """A service benchmark's `main`: run it, write its section of bench/RESULTS.md, and clean
    up its processes, topics, databases and logs (unless --keep), also when it fails."""
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f"crm-bench-{name}-"))
    run: R | None = None
    try:
        run = make_run(endpoints_from_environment(), args, work)
        asyncio.run(bench(run))
        write_section(name, render(run, started_at, time.perf_counter() - started))
    except Exception as exc:  # any failure ends the run; say what and where to look
        print(f"bench: FAILED: {describe(exc)}", file=sys.stderr)
        print(f"bench: the services' logs are in {work}", file=sys.stderr)
        return 1
    finally:
        if run is not None:
            run.stop()
            if not args.keep:
                try:
                    asyncio.run(run.cleanup())
                except Exception as exc:  # reported; the run's outcome stands
                    print(f"bench: could not clean up: {describe(exc)}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work)
    print(f"bench: done in {time.perf_counter() - started:.0f} s; wrote its section of {RESULTS}")
    return 0


RESULTS = "bench/RESULTS.md"
