"""What the benchmarks share: the load (people and their touchpoints), figures, CPU accounting
from /proc, the machine's facts, the endpoints, and writing their part of bench/RESULTS.md."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crm_shared.contracts import TOUCHPOINT_ADAPTER
from crm_shared.contracts.examples import example_event
from crm_shared.kafka import CLOUDEVENTS_CONTENT_TYPE, OutgoingRecord

ROOT = Path(__file__).resolve().parent.parent
# A script under bench/ has only its own folder on sys.path; the helpers the tests use live in
# tests/.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import (  # noqa: E402
    Endpoints,
    InfrastructureUnavailable,
    database_url,
    environment_endpoints,
    local_endpoints,
)

RESULTS = ROOT / "bench" / "RESULTS.md"
RESULTS_TITLE = "# Benchmark results"
RESULTS_INTRO = (
    "Each benchmark rewrites only its own section below, between its markers; every figure in a "
    "section comes from the run that section names. Compare runs only on the same machine."
)


class BenchFailure(Exception):
    """The run cannot produce trustworthy figures; the message says why."""


# --- the load: a population of people and their touchpoints -----------------------------------
@dataclass(frozen=True)
class Person:
    customer_id: str
    email: str
    anonymous_id: str
    phone: str


# (event type, which of a person's identifiers the channel knows, chance it also knows the email)
# Web traffic is mostly anonymous, stores and call centres know the customer number.
SCENARIOS: list[tuple[str, tuple[str, ...], float]] = [
    ("crm.touchpoint.web.page_viewed", ("anonymous_id",), 0.3),
    ("crm.touchpoint.web.product_viewed", ("anonymous_id",), 0.3),
    ("crm.touchpoint.web.cart_updated", ("anonymous_id", "email"), 0.0),
    ("crm.touchpoint.email.opened", ("email",), 0.0),
    ("crm.touchpoint.email.clicked", ("email",), 0.0),
    ("crm.touchpoint.store.purchase", ("customer_id",), 0.2),
    ("crm.touchpoint.phone.call_completed", ("phone", "customer_id"), 0.0),
]


def population(size: int, rng: random.Random) -> list[Person]:
    run = uuid.uuid4().hex[:6]
    return [
        Person(
            customer_id=f"c-{run}-{n}",
            email=f"person.{run}.{n}@example.org",
            anonymous_id=f"a-{run}-{n}",
            phone=f"+3706{rng.randrange(10**7):07d}",
        )
        for n in range(size)
    ]


def touchpoints(people: Sequence[Person], count: int, rng: random.Random) -> list[dict[str, Any]]:
    events = []
    for _ in range(count):
        person = rng.choice(people)
        event_type, kinds, email_chance = rng.choice(SCENARIOS)
        identities = {kind: getattr(person, kind) for kind in kinds}
        if rng.random() < email_chance:
            identities["email"] = person.email
        event = example_event(event_type, event_id=str(uuid.uuid4()))
        event["data"]["identities"] = identities
        events.append(event)
    return events


def as_records(events: Sequence[dict[str, Any]], topic: str) -> list[OutgoingRecord]:
    """Exactly what ingest would publish: validated, keyed by the strongest identifier."""
    records = []
    for raw in events:
        # JSON, as on the wire: the contract is strict about types in Python mode.
        event: Any = TOUCHPOINT_ADAPTER.validate_json(json.dumps(raw))
        records.append(
            OutgoingRecord(
                topic=topic,
                key=event.data.identities.strongest().encode(),
                value=event.model_dump_json(exclude_none=True).encode(),
                headers={"content-type": CLOUDEVENTS_CONTENT_TYPE},
            )
        )
    return records


# --- figures ------------------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: a value that was actually observed."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


@dataclass(frozen=True)
class Figure:
    phase: str
    events: int
    seconds: float
    rate: float | None
    unit: str
    latencies_ms: Sequence[float] = ()
    note: str = ""

    def quantile(self, p: float) -> str:
        return f"{percentile(self.latencies_ms, p):.1f}" if self.latencies_ms else "–"

    def line(self) -> str:
        rate = f"{self.rate:8.1f} {self.unit}" if self.rate is not None else ""
        latency = (
            f"  p50 {self.quantile(50)} ms  p95 {self.quantile(95)} ms  p99 {self.quantile(99)} ms"
            if self.latencies_ms
            else ""
        )
        note = f"  ({self.note})" if self.note else ""
        return f"{self.phase}: {self.events} in {self.seconds:.2f} s  {rate}{latency}{note}"


# --- CPU accounting from /proc: where the machine's time went during each phase ---------------
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    return text.rpartition(")")[2].split()


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes and of their exited children (e.g. PostgreSQL backends)."""
    total = 0
    for pid in pids:
        fields = stat_fields(pid)
        if fields is not None:
            total += sum(int(f) for f in fields[11:15])
    return total / CLOCK_TICKS


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def log_size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


def log_lines(log: Path) -> int:
    with log.open("rb") as lines:
        return sum(1 for _ in lines)


def ingest_server_ms(log: Path, offset: int) -> list[float]:
    """Durations ingest itself measured for POST /v1/events (its access log), from `offset`:
    the gap to the client's figures is spent outside the route, in the HTTP server, the
    network and the load generator."""
    with log.open("rb") as source:
        source.seek(offset)
        data = source.read()
    durations = []
    for line in data.splitlines():
        if b'"/v1/events"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("logger") == "ingest.access" and entry.get("method") == "POST":
            durations.append(float(entry["duration_ms"]))
    return durations


def fixed(pids: list[int]) -> Callable[[], list[int]]:
    return lambda: pids


def cpu_count() -> int:
    """What `nproc` says: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def host_facts() -> dict[str, str]:
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        os.uname().machine,
    )
    return {
        "CPUs (nproc)": str(cpu_count()),
        "CPU model": cpu_model,
        "Memory": f"{memory_kb / 1024 / 1024:.1f} GiB (MemTotal)",
        "Kernel": os.uname().release,
        "Python": sys.version.split()[0],
    }


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class CpuGroups:
    """Process groups to account for; a group is left out when it does not run on this machine
    (an external broker or database)."""

    groups: dict[str, Callable[[], list[int]]] = field(default_factory=dict)

    def sample(self) -> dict[str, float]:
        return {name: cpu_seconds(pids()) for name, pids in self.groups.items()}

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float], busy_s: float) -> dict[str, float]:
        """Per group, plus `other`: whatever else kept the machine busy (other programs, the
        kernel), so a run disturbed by a neighbour shows it."""
        spent = {k: after[k] - before[k] for k in before}
        spent["other"] = max(0.0, busy_s - sum(spent.values()))
        return spent


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent not idle, from the first line of /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = ticks[:7]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


@dataclass(frozen=True)
class CpuUse:
    phase: str
    wall_s: float
    seconds: dict[str, float]


# --- infrastructure -----------------------------------------------------------------------------
def endpoints_from_environment() -> Endpoints:
    try:
        return environment_endpoints() or local_endpoints()
    except InfrastructureUnavailable as refusal:
        raise BenchFailure(f"local infrastructure did not start: {refusal}") from refusal


def local_broker_pid() -> int | None:
    """The Tansu process `scripts/localinfra.py` started, when that is the broker in use."""
    try:
        pid = int((ROOT / ".state" / "tansu.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if comm(pid) == "tansu" else None


def broker_name(bootstrap: str) -> str:
    """Which broker a run used, for its machine table."""
    if local_broker_pid() is not None:
        return "Tansu, in memory (scripts/localinfra.py)"
    return f"Kafka at {bootstrap}"


def git_revision() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    # Every file but the results, which each bench rewrites: running two in a row is not a
    # local change.
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", ".", ":(exclude)bench/RESULTS.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    revision = head.stdout.strip() or "unknown"
    return f"{revision} with local changes" if dirty.stdout.strip() else revision


def describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return str(exc) or type(exc).__name__


def write_section(name: str, text: str) -> None:
    """Replace benchmark `name`'s section of bench/RESULTS.md (between `<!-- name:start -->` and
    `<!-- name:end -->`), keeping the other benchmarks' sections; a new section goes last."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.strip()}\n{end}"
    current = RESULTS.read_text() if RESULTS.exists() else ""
    if start in current and end in current:
        before, _, after = current.partition(start)
        _, _, after = after.partition(end)
        updated = before + block + after
    elif current.startswith(RESULTS_TITLE):
        updated = current.rstrip() + "\n\n" + block + "\n"
    else:
        updated = f"{RESULTS_TITLE}\n\n{RESULTS_INTRO}\n\n{block}\n"
    RESULTS.write_text(updated)


# --- databases of a run ---------------------------------------------------------------------------
async def create_database(server_url: str, label: str) -> tuple[str, str]:
    """A new, empty database on the server: (its name, its URL)."""
    import asyncpg  # only the benchmarks that use a database need it loaded

    name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, database_url(server_url, name)


async def drop_databases(server_url: str, names: Sequence[str]) -> None:
    import asyncpg

    if not names:
        return
    conn = await asyncpg.connect(server_url)
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def postgres_facts(server_url: str) -> tuple[dict[str, str], int | None]:
    """The server's version and durability settings (they change commit cost by an order of
    magnitude), and its postmaster's pid when it runs on this machine (for CPU accounting)."""
    import asyncpg

    conn = await asyncpg.connect(server_url)
    try:
        version = await conn.fetchval("SELECT version()")
        durability = {
            name: await conn.fetchval(f"SHOW {name}") for name in ("fsync", "synchronous_commit")
        }
        # Our backend's parent is the postmaster (looked up while the backend still runs).
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        fields = stat_fields(backend) if comm(backend) == "postgres" else None
    finally:
        await conn.close()
    facts = {
        "PostgreSQL": str(version),
        "PostgreSQL durability": ", ".join(f"{k}={v}" for k, v in durability.items()),
    }
    return facts, int(fields[1]) if fields is not None else None
