"""The platform benchmark: ingest and profile throughput and end-to-end latency
of the four services as processes, printed as it goes and written to bench/RESULTS.md.

    .venv/bin/python bench/run.py        # or `make bench`, which starts the infrastructure first

Endpoints come from CRM_KAFKA_BOOTSTRAP / CRM_DATABASE_URL, else from `scripts/localinfra.py up`.
The run uses its own topic prefix and its own `bench_<service>_<random>` databases, which it
drops at the end; every phase is bounded in requests and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

# A script has only its own folder (bench/, for `common`) on sys.path; the helpers the tests use
# live in tests/, under the repository.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from tests.support import (
    Endpoints,
    ServiceProcess,
    free_port,
    service_env,
    wait_until,
)

from common import (
    BenchFailure,
    CpuGroups,
    CpuUse,
    Figure,
    Person,
    as_records,
    broker_name,
    children_of,
    cpu_count,
    create_database,
    describe,
    drop_databases,
    endpoints_from_environment,
    fixed,
    git_revision,
    host_facts,
    ingest_server_ms,
    local_broker_pid,
    log_lines,
    log_size,
    machine_busy_seconds,
    percentile,
    population,
    postgres_facts,
    touchpoints,
    write_section,
)
from crm_shared.contracts import TOUCHPOINTS
from crm_shared.contracts.examples import example_event
from crm_shared.kafka import CLOUDEVENTS_CONTENT_TYPE, create_topics, publish_all
from crm_shared.settings import StatefulSettings

T = TypeVar("T")
COMMAND = ".venv/bin/python bench/run.py"
SERVICES = ("ingest", "profile", "loyalty", "notify")
PARTITIONS = 12  # the production default (CRM_TOPIC_PARTITIONS)
PHASE_BUDGET_S = 60.0
READY_TIMEOUT_S = 90.0
WARMUP_EVENTS = 20
E2E_POLL_INTERVAL_S = 0.01
E2E_DEADLINE_S = 10.0
COUNT_POLL_INTERVAL_S = 0.1
PROBE_IDLE_S = 0.1
# The services' consumers wait this long at the broker (CRM_CONSUMER_FETCH_MAX_WAIT_MS).
FETCH_MAX_WAIT_MS: int = StatefulSettings.model_fields["consumer_fetch_max_wait_ms"].default
WRITE_HEADERS = {
    "Content-Type": CLOUDEVENTS_CONTENT_TYPE,
    "Authorization": "Basic " + base64.b64encode(b"dev-write-key:").decode(),
}
ADMIN_HEADERS = {"Authorization": "Bearer dev-admin-token"}


@dataclass
class Bench:
    endpoints: Endpoints
    args: argparse.Namespace
    log_dir: Path
    prefix: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:8]}.")
    rng: random.Random = field(default_factory=lambda: random.Random(20261120))
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)
    db: dict[str, asyncpg.Connection] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    cpu: list[CpuUse] = field(default_factory=list)
    cpu_groups: CpuGroups = field(default_factory=CpuGroups)
    touchpoints_sent: int = 0
    machine: dict[str, str] = field(default_factory=dict)
    crashed: dict[str, str] = field(default_factory=dict)
    log_volume: dict[str, int] = field(default_factory=dict)
    profile_commits_per_touchpoint: float = 0.0
    people: list[Person] = field(init=False)

    def __post_init__(self) -> None:
        self.people = population(self.args.people, self.rng)

    # --- setup and teardown ---
    async def create_database(self, service: str) -> str:
        name, url = await create_database(self.endpoints.database_server, service)
        self.databases.append(name)
        return url

    async def drop_databases(self) -> None:
        for conn in self.db.values():
            await conn.close()
        await drop_databases(self.endpoints.database_server, self.databases)

    async def start(self) -> None:
        await create_topics(self.endpoints.bootstrap, prefix=self.prefix, partitions=PARTITIONS)
        for name in SERVICES:
            url = None if name == "ingest" else await self.create_database(name)
            env = service_env(self.endpoints, self.prefix, url)
            # The tests shorten these for speed; the figures should describe the shipped defaults.
            env.pop("CRM_OUTBOX_POLL_INTERVAL_S", None)
            env.pop("CRM_CONSUMER_RETRY_BACKOFF_S", None)
            service = ServiceProcess(f"crm_{name}", env, free_port(), self.log_dir / f"{name}.log")
            self.services[name] = service
            service.start()
            if url is not None:
                self.db[name] = await asyncpg.connect(url)
        try:
            await asyncio.gather(
                *(s.wait_ready(timeout=READY_TIMEOUT_S) for s in self.services.values())
            )
        except AssertionError as exc:
            raise BenchFailure(f"a service did not become ready: {exc}") from exc
        print(f"bench: services ready (topic prefix {self.prefix!r}, logs in {self.log_dir})")
        await self.describe_machine()

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()

    async def delete_topics(self) -> None:
        """The broker may keep everything in memory: leave nothing of this run behind."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.endpoints.bootstrap)
        await admin.start()
        try:
            ours = [t for t in await admin.list_topics() if t.startswith(self.prefix)]
            if ours:
                await admin.delete_topics(ours)
        finally:
            await admin.close()

    async def describe_machine(self) -> None:
        facts, postmaster = await postgres_facts(self.endpoints.database_server)
        broker_pid = local_broker_pid()
        self.machine = {
            **host_facts(),
            "Broker": broker_name(self.endpoints.bootstrap),
            **facts,
            "Partitions per topic": str(PARTITIONS),
        }
        groups = self.cpu_groups.groups
        for name, service in self.services.items():
            assert service.process is not None
            groups[name] = fixed([service.process.pid])
        if postmaster is not None:
            root = postmaster
            groups["postgres"] = lambda: [root, *children_of(root)]
        if broker_pid is not None:
            groups["broker"] = fixed([broker_pid])
        groups["load generator"] = fixed([os.getpid()])

    # --- measuring ---
    async def measured(self, phase: str, body: Callable[[], Awaitable[T]]) -> T:
        """Run one phase and record how much CPU each process group spent in it."""
        before, busy_before = self.cpu_groups.sample(), machine_busy_seconds()
        started = time.perf_counter()
        result = await body()
        wall = time.perf_counter() - started
        after, busy = self.cpu_groups.sample(), machine_busy_seconds() - busy_before
        use = CpuUse(phase, wall, CpuGroups.delta(before, after, busy))
        self.cpu.append(use)
        spent = ", ".join(f"{k} {v:.1f}" for k, v in use.seconds.items())
        print(f"  cpu seconds in {wall:.1f} s wall: {spent}")
        return result

    def record(self, figure: Figure) -> None:
        self.figures.append(figure)
        print(f"bench: {figure.line()}", flush=True)

    async def progress(self) -> Progress:
        profile, loyalty, notify = self.db["profile"], self.db["loyalty"], self.db["notify"]
        return Progress(
            expected=self.touchpoints_sent,
            # What profile published, which loyalty and notify each consume: a resolved
            # touchpoint per touchpoint, and a snapshot per profile version (merges add some).
            published=await profile.fetchval(
                "SELECT (SELECT count(*) FROM touchpoints) + "
                "(SELECT coalesce(sum(version), 0) FROM profiles)"
            ),
            profile=await profile.fetchval("SELECT count(*) FROM processed_events"),
            outbox=await profile.fetchval("SELECT count(*) FROM outbox"),
            # Only their consumers of what profile published: notify also reads crm.loyalty.v1.
            loyalty=await loyalty.fetchval(
                "SELECT count(*) FROM processed_events WHERE consumer = ANY($1::text[])",
                consumers_of("loyalty"),
            ),
            notify=await notify.fetchval(
                "SELECT count(*) FROM processed_events WHERE consumer = ANY($1::text[])",
                consumers_of("notify"),
            ),
        )

    async def drain(self, after: str) -> None:
        """Wait until every service has handled every touchpoint sent so far, so the next phase
        does not share the machine with the previous one's backlog."""
        started = time.perf_counter()
        try:
            await wait_until(
                self.progress,
                timeout=PHASE_BUDGET_S,
                interval=COUNT_POLL_INTERVAL_S,
                what=f"the pipeline to drain after {after}",
            )
        except AssertionError as exc:
            raise BenchFailure(str(exc)) from exc
        self.record(
            Figure(
                f"drain after {after}",
                self.touchpoints_sent,
                time.perf_counter() - started,
                None,
                "",
                note="until profile, loyalty and notify had handled every touchpoint so far",
            )
        )

    async def post_all(self, bodies: Iterator[bytes], deadline: float) -> list[float]:
        """One client with its own connection: post until the bodies run out or the deadline
        passes; latencies in ms. Clients share no pool: a single httpx pool serving 32
        concurrent requests costs the load generator more CPU than ingest spends."""
        latencies: list[float] = []
        url = f"{self.services['ingest'].url}/v1/events"
        async with httpx.AsyncClient(headers=WRITE_HEADERS, timeout=30) as http:
            for body in bodies:
                if time.monotonic() > deadline:
                    break
                started = time.perf_counter()
                answer = await http.post(url, content=body)
                elapsed = time.perf_counter() - started
                if answer.status_code != 202:
                    raise BenchFailure(f"ingest answered {answer.status_code}: {answer.text[:300]}")
                latencies.append(elapsed * 1000)
        return latencies

    async def ingest_throughput(self, concurrency: int, count: int) -> None:
        bodies = [json.dumps(e).encode() for e in touchpoints(self.people, count, self.rng)]
        shared = iter(bodies)  # one iterator for all clients: each body is posted once
        log = self.services["ingest"].log
        offset = log_size(log)
        deadline = time.monotonic() + PHASE_BUDGET_S
        started = time.perf_counter()
        # A task group, so that one client's failure stops the others too.
        async with asyncio.TaskGroup() as clients:
            tasks = [
                clients.create_task(self.post_all(shared, deadline)) for _ in range(concurrency)
            ]
        elapsed = time.perf_counter() - started
        latencies = [ms for task in tasks for ms in task.result()]
        self.touchpoints_sent += len(latencies)
        server = ingest_server_ms(log, offset)
        notes = []
        if server:
            notes.append(
                f"inside ingest: p50 {percentile(server, 50):.1f} ms, "
                f"p99 {percentile(server, 99):.1f} ms"
            )
        if len(latencies) < count:
            notes.append(f"time budget reached after {len(latencies)}")
        self.record(
            Figure(
                f"ingest POST /v1/events, {concurrency} concurrent client(s)",
                len(latencies),
                elapsed,
                len(latencies) / elapsed,
                "events/s",
                latencies,
                "; ".join(notes),
            )
        )

    async def warm_up(self) -> None:
        """First requests pay for connections, topic metadata and the consumer groups' first
        assignment; none of that belongs in the figures."""
        bodies = [json.dumps(e).encode() for e in touchpoints(self.people, WARMUP_EVENTS, self.rng)]
        posted = await self.post_all(iter(bodies), time.monotonic() + PHASE_BUDGET_S)
        self.touchpoints_sent += len(posted)
        await self.drain("warm-up")

    async def profile_throughput(self, count: int) -> None:
        topic = TOUCHPOINTS.full_name(self.prefix)
        records = as_records(touchpoints(self.people, count, self.rng), topic)
        profile = self.db["profile"]
        baseline: int = await profile.fetchval("SELECT count(*) FROM touchpoints")
        commits_before = await self.commits("profile")
        producer = AIOKafkaProducer(
            bootstrap_servers=self.endpoints.bootstrap,
            acks="all",
            enable_idempotence=self.endpoints.idempotence,
            linger_ms=5,
        )
        await producer.start()
        try:
            started = time.perf_counter()
            await publish_all(producer, records)
            produced = time.perf_counter() - started
        finally:
            await producer.stop()
        self.touchpoints_sent += count
        print(f"  produced {count} touchpoints to {topic} in {produced:.2f} s")

        async def stored() -> int:
            n: int = await profile.fetchval("SELECT count(*) FROM touchpoints")
            return n if n >= baseline + count else 0

        try:
            await wait_until(
                stored,
                timeout=PHASE_BUDGET_S - produced,
                interval=COUNT_POLL_INTERVAL_S,
                what=f"profile to store {count} touchpoints",
            )
        except AssertionError as exc:
            now: int = await profile.fetchval("SELECT count(*) FROM touchpoints")
            raise BenchFailure(
                f"{exc}; stored {now - baseline} of {count} "
                f"({(now - baseline) / PHASE_BUDGET_S:.1f}/s)"
            ) from exc
        elapsed = time.perf_counter() - started
        self.profile_commits_per_touchpoint = (
            await self.commits("profile") - commits_before
        ) / count
        self.record(
            Figure(
                "profile: touchpoints resolved and stored",
                count,
                elapsed,
                count / elapsed,
                "touchpoints/s",
                note=f"{len(self.people)} people, produced straight to the topic "
                f"in {produced:.2f} s",
            )
        )

    async def commits(self, service: str) -> int:
        """Transactions committed in the service's database so far. PostgreSQL publishes these
        counters about once a second, so a difference over a phase is close, not exact."""
        committed: int = await self.db[service].fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return committed

    async def end_to_end(self, count: int) -> None:
        run = uuid.uuid4().hex[:6]
        visible_ms: list[float] = []
        accepted_ms: list[float] = []
        deadline = time.monotonic() + PHASE_BUDGET_S
        started = time.perf_counter()
        async with httpx.AsyncClient(timeout=30) as http:
            for n in range(count):
                if time.monotonic() > deadline:
                    break
                email = f"e2e.{run}.{n}@example.org"
                event = example_event("crm.touchpoint.web.page_viewed", event_id=str(uuid.uuid4()))
                event["data"]["identities"] = {"anonymous_id": f"a-e2e-{run}-{n}", "email": email}
                posted = time.perf_counter()
                answer = await http.post(
                    f"{self.services['ingest'].url}/v1/events",
                    content=json.dumps(event).encode(),
                    headers=WRITE_HEADERS,
                )
                accepted = time.perf_counter()
                if answer.status_code != 202:
                    raise BenchFailure(f"ingest answered {answer.status_code}: {answer.text}")
                self.touchpoints_sent += 1

                async def visible(email: str = email) -> bool:
                    found = await http.get(
                        f"{self.services['profile'].url}/v1/profiles",
                        params={"email": email},
                        headers=ADMIN_HEADERS,
                    )
                    if found.status_code not in (200, 404):
                        raise BenchFailure(f"profile API answered {found.status_code}")
                    return found.status_code == 200

                try:
                    await wait_until(
                        visible,
                        timeout=E2E_DEADLINE_S,
                        interval=E2E_POLL_INTERVAL_S,
                        what=f"the profile of {email}",
                    )
                except AssertionError as exc:
                    raise BenchFailure(str(exc)) from exc
                visible_ms.append((time.perf_counter() - accepted) * 1000)
                accepted_ms.append((accepted - posted) * 1000)
        elapsed = time.perf_counter() - started
        note = "" if len(visible_ms) == count else f"time budget reached after {len(visible_ms)}"
        self.record(
            Figure(
                "end to end: 202 from ingest → profile visible in GET /v1/profiles",
                len(visible_ms),
                elapsed,
                None,
                "",
                visible_ms,
                f"sequential, polled every {E2E_POLL_INTERVAL_S * 1000:.0f} ms {note}".strip(),
            )
        )
        self.record(
            Figure(
                "end to end: the POST itself (idle pipeline)",
                len(accepted_ms),
                sum(accepted_ms) / 1000,
                None,
                "",
                accepted_ms,
            )
        )

    async def broker_hop(self, partitions: int, count: int) -> None:
        """From the broker's ack to a waiting consumer getting one lone record, with the fetch
        wait the services use: the floor under every hop between two services."""
        topic = f"{self.prefix}bench.probe.p{partitions}"
        admin = AIOKafkaAdminClient(bootstrap_servers=self.endpoints.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, partitions, 1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(
            bootstrap_servers=self.endpoints.bootstrap,
            acks="all",
            enable_idempotence=self.endpoints.idempotence,
        )
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.endpoints.bootstrap,
            group_id=topic,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )
        await producer.start()
        await consumer.start()
        hops: list[float] = []
        try:
            # The first record also waits for the group's first assignment.
            await producer.send_and_wait(topic, b"warm-up", key=b"warm-up")
            await asyncio.wait_for(consumer.getone(), PHASE_BUDGET_S)
            for n in range(count):
                # Not a wait for anything: the consumer must sit idle, as between two events
                # of the end-to-end phase, for its fetch to be parked at the broker.
                await asyncio.sleep(PROBE_IDLE_S)
                await producer.send_and_wait(topic, b"probe", key=f"k{n}".encode())
                acked = time.perf_counter()
                await asyncio.wait_for(consumer.getone(), E2E_DEADLINE_S)
                hops.append((time.perf_counter() - acked) * 1000)
        finally:
            await consumer.stop()
            await producer.stop()
        self.record(
            Figure(
                f"broker hop: ack → consumer, {partitions} partition(s)",
                count,
                sum(hops) / 1000,
                None,
                "",
                hops,
                f"a lone record after {PROBE_IDLE_S * 1000:.0f} ms idle",
            )
        )

    async def service_counters(self) -> dict[str, float]:
        """Outcomes the services counted: retries or dead letters would make figures suspect."""
        counters: dict[str, float] = {}
        for name in ("profile", "loyalty", "notify"):
            service = self.services[name]
            for outcome in ("processed", "duplicate", "retried", "dead_lettered"):
                counters[f"{name} {outcome}"] = sum(
                    [
                        await service.metric(
                            "crm_consumer_records_total",
                            service=name,
                            consumer=consumer,
                            outcome=outcome,
                        )
                        for consumer in consumers_of(name)
                    ]
                )
        return counters


@dataclass(frozen=True)
class Progress:
    """How far the pipeline got; true once it has caught up with everything sent."""

    expected: int
    published: int
    profile: int
    outbox: int
    loyalty: int
    notify: int

    def __bool__(self) -> bool:
        return (
            self.profile == self.expected
            and self.outbox == 0
            and self.loyalty == self.published
            and self.notify == self.published
        )


def consumers_of(service: str) -> list[str]:
    return (
        ["profile.touchpoints"]
        if service == "profile"
        else [f"{service}.touchpoints", f"{service}.profiles"]
    )


# --- the run ------------------------------------------------------------------------------------
async def run(bench: Bench) -> dict[str, float]:
    args = bench.args
    try:
        await bench.start()
        await bench.warm_up()
        for concurrency in args.concurrency:
            label = f"ingest, {concurrency} client(s)"
            await bench.measured(
                label, partial(bench.ingest_throughput, concurrency, args.ingest_events)
            )
            await bench.measured(f"drain after {label}", partial(bench.drain, label))
        await bench.measured("profile", partial(bench.profile_throughput, args.profile_events))
        await bench.measured("drain after profile", partial(bench.drain, "profile"))
        await bench.measured("end to end", partial(bench.end_to_end, args.e2e_events))
        for partitions in (PARTITIONS, 1):
            await bench.broker_hop(partitions, args.probe_events)
        counters = await bench.service_counters()
        bench.log_volume = {n: log_lines(s.log) for n, s in bench.services.items()}
        print("bench: consumer outcomes: " + ", ".join(f"{k} {v:.0f}" for k, v in counters.items()))
        return counters
    finally:
        # Before stopping them: which services had died on their own, and their last words.
        bench.crashed = {
            name: s.tail()
            for name, s in bench.services.items()
            if s.process is not None and s.returncode() is not None
        }
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in bench.services.values()))
        # Best effort: a failing clean-up must not hide the failure that brought us here.
        await best_effort("drop the bench databases", bench.drop_databases())
        await best_effort("delete the bench topics", bench.delete_topics())


async def best_effort(what: str, step: Awaitable[None]) -> None:
    try:
        await step
    except Exception as exc:  # reported, and the run goes on to its own outcome
        print(f"bench: could not {what}: {describe(exc)}", file=sys.stderr)


def render(bench: Bench, counters: dict[str, float], started: datetime, total_s: float) -> str:
    args = bench.args
    cpus = cpu_count()
    command = " ".join([COMMAND, *sys.argv[1:]])
    lines = [
        "## The platform: four services end to end (bench/run.py)",
        "",
        f"Written by `{command}` (`make bench`); every figure below comes from that run and is",
        "overwritten by the next one.",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; the whole run took {total_s:.0f} s",
        f"- Revision: {git_revision()}",
        *(f"- {k}: {v}" for k, v in bench.machine.items()),
        f"- Load: {args.people} people (customer id, email, anonymous id, phone each), "
        "touchpoints from web, email, store and phone, each carrying the identifiers its "
        "channel knows",
        "",
        "### Figures",
        "",
        "| Measurement | Events | Wall time (s) | Throughput "
        "| p50 (ms) | p95 (ms) | p99 (ms) | Note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for f in bench.figures:
        rate = f"{f.rate:.1f} {f.unit}" if f.rate is not None else "–"
        lines.append(
            f"| {f.phase} | {f.events} | {f.seconds:.2f} | {rate} | {f.quantile(50)} "
            f"| {f.quantile(95)} | {f.quantile(99)} | {f.note} |"
        )
    groups = list(bench.cpu[0].seconds) if bench.cpu else []
    lines += [
        "",
        "### Where the CPU went",
        "",
        "CPU seconds (user + system, from /proc) each group spent during each phase; `other` is",
        "the rest of the machine's busy time (other programs, the kernel), and the last column",
        f"is how busy the whole machine ({cpus} CPUs) was.",
        "",
        "| Phase | Wall (s) | " + " | ".join(groups) + " | Machine busy |",
        "|---|---:|" + "---:|" * len(groups) + "---:|",
    ]
    for use in bench.cpu:
        busy = sum(use.seconds.values()) / (use.wall_s * cpus) * 100
        cells = " | ".join(f"{use.seconds[g]:.1f}" for g in groups)
        lines.append(f"| {use.phase} | {use.wall_s:.1f} | {cells} | {busy:.0f} % |")
    lines += [
        "",
        "Consumer outcomes over the run (from each service's /metrics): "
        + ", ".join(f"{k} {v:.0f}" for k, v in counters.items())
        + ".",
        "",
        f"Log lines written over the run per touchpoint sent ({bench.touchpoints_sent}): "
        + ", ".join(
            f"{name} {count / bench.touchpoints_sent:.1f}"
            for name, count in bench.log_volume.items()
        )
        + ".",
        "",
        "### How to read these",
        "",
        *how_to_read(bench, cpus),
        "",
    ]
    return "\n".join(lines)


def how_to_read(bench: Bench, cpus: int) -> list[str]:
    figures = {f.phase: f for f in bench.figures}
    cpu = {use.phase: use for use in bench.cpu}
    profile = figures["profile: touchpoints resolved and stored"]
    assert profile.rate is not None
    lines = [
        f"- One machine with {cpus} CPUs runs everything: the broker, PostgreSQL, the four "
        "services and the load generator (this script). The CPU table shows how they share "
        "it; a phase whose machine is close to 100 % busy measures the machine as much as the "
        "service. Compare runs of this file only with runs on the same machine.",
        "- The broker is Tansu keeping data in memory, not a replicated Apache Kafka cluster: "
        "an acknowledged write costs no disk and no replication round trip here. PostgreSQL "
        f"ran with {bench.machine.get('PostgreSQL durability', 'its defaults')}; with fsync "
        "on, every commit also waits for the disk.",
        "- Ingest answers 202 only once the broker acknowledged the event, one event per "
        "request; it hands each request's records to the producer as ready record batches, "
        "which do not wait for the producer's linger. The note of each ingest row gives "
        "the time spent inside ingest's route (its access log); the rest of the client's "
        "figure is the HTTP server, the network and the load generator, all waiting for a CPU "
        "when the machine is busy. Loyalty and notify consume every accepted event meanwhile, "
        "as in production.",
        "- Profile applies what each fetch brings in batches, one transaction per batch (up "
        "to CRM_CONSUMER_BATCH_SIZE records), and wakes the outbox relay after each commit: "
        f"{bench.profile_commits_per_touchpoint:.2f} committed transactions in its database "
        f"and {1000 / profile.rate:.2f} ms of wall time per touchpoint in this run, with "
        "loyalty and notify working on the same CPUs. `make bench-profile` measures profile "
        "alone, on a larger population.",
    ]
    if "profile" in cpu:
        use = cpu["profile"].seconds
        downstream = use.get("loyalty", 0.0) + use.get("notify", 0.0)
        lines.append(
            f"- While profile worked through its {profile.events} touchpoints it used "
            f"{use.get('profile', 0.0):.1f} CPU seconds, and loyalty and notify, consuming the "
            "records it emits (a resolved touchpoint and a snapshot per touchpoint, plus a "
            f"snapshot per merged profile) at the same time, used {downstream:.1f}: each of "
            "them decodes, checks and applies every record too, and here they all share the "
            "same CPUs."
        )
    lines += [
        "- The drain rows time how long the services needed to catch up after a phase; the "
        "next phase starts only then.",
        "- End to end is measured on an idle pipeline, one event at a time, from ingest's 202 "
        "until the profile API finds the new email (polled every "
        f"{E2E_POLL_INTERVAL_S * 1000:.0f} ms, so figures are that coarse). Most of it is the "
        "hop from the broker to profile's consumer. The broker-hop rows measure that hop "
        f"alone, with the services' fetch wait ({FETCH_MAX_WAIT_MS} ms, "
        "CRM_CONSUMER_FETCH_MAX_WAIT_MS): this run's p50 was "
        f"{hop(bench, PARTITIONS)} ms with {PARTITIONS} partitions against {hop(bench, 1)} ms "
        "with one. The local broker often answers a waiting fetch over several partitions "
        "only when its wait runs out, not when a record arrives; Apache Kafka answers as soon "
        "as data is there, so this part of the figure says more about the local broker than "
        "about the services.",
    ]
    return lines


def hop(bench: Bench, partitions: int) -> str:
    return next(
        (
            f.quantile(50)
            for f in bench.figures
            if f.phase == f"broker hop: ack → consumer, {partitions} partition(s)"
        ),
        "–",
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ingest-events", type=int, default=2000, help="events per ingest run")
    parser.add_argument(
        "--concurrency",
        type=lambda v: [int(c) for c in v.split(",")],
        default=[1, 32],
        help="concurrent HTTP clients of the ingest runs, comma separated",
    )
    parser.add_argument("--profile-events", type=int, default=2000, help="touchpoints produced")
    parser.add_argument("--people", type=int, default=500, help="people behind the touchpoints")
    parser.add_argument("--e2e-events", type=int, default=100, help="end-to-end samples")
    parser.add_argument("--probe-events", type=int, default=30, help="broker hop samples")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the service logs after a successful run"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    log_dir: Path | None = None
    bench: Bench | None = None
    try:
        endpoints = endpoints_from_environment()
        log_dir = Path(tempfile.mkdtemp(prefix="crm-bench-"))
        bench = Bench(endpoints, args, log_dir)
        counters = asyncio.run(run(bench))
        total_s = time.perf_counter() - started
        write_section("platform", render(bench, counters, started_at, total_s))
    except Exception as exc:  # any failure ends the run; say what and where to look
        message = describe(exc)
        print(f"bench: FAILED: {message}", file=sys.stderr)
        for name, tail in (bench.crashed if bench else {}).items():
            if tail not in message:  # a readiness failure already quotes the log
                print(f"--- {name} had exited; its log ends with:\n{tail}", file=sys.stderr)
        if log_dir is not None:
            print(f"bench: service logs are in {log_dir}", file=sys.stderr)
        return 1
    finally:
        # Also after Ctrl-C; stopping a stopped service does nothing.
        if bench is not None:
            bench.stop()
    if not args.keep_logs:
        shutil.rmtree(bench.log_dir)  # a failed run keeps them, and says where
    print(f"bench: done in {total_s:.0f} s; wrote its section of bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
