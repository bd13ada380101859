"""bench/notify: how many touchpoints per second notify evaluates against its triggers, and how
many emails per second it delivers to a local SMTP server, printed and written to its section
of bench/RESULTS.md.

    .venv/bin/python bench/notify     # or `make bench-notify`, which starts the infrastructure

Trigger evaluations: one notify process with the example rules, on a fresh database and fresh
topics. The load is what profile publishes on `crm.touchpoints.resolved.v1`: page views (no
trigger), cart updates (the abandoned-cart reminder, one waiting per customer, moved by the
next), orders (which cancel it, and open the join-programme offer), inbound calls (a survey and
a follow-up task) and outbound email (which cancels the follow-up). Every trigger here waits
hours, so nothing is due during the measurement: the figure is deciding and recording, not
sending. Timed from the first record published until every one is handled and the outbox is
empty.

Email delivery: the replica gets a snapshot of each customer (an email address, a daytime time
zone), then one `points_expiring` loyalty event each (transactional, due at once) is
published; timed until the SMTP server (aiosmtpd, in this process) has received every message.
A timer round's messages go out together, over reused SMTP connections.

Endpoints come from CRM_KAFKA_BOOTSTRAP / CRM_DATABASE_URL, else from `scripts/localinfra.py up`.
Topics and databases get a run prefix and are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]

import asyncpg  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402
from tests.support import free_port, wait_until  # noqa: E402
from tests.test_notify import daytime_zone, person  # noqa: E402

from common import (  # noqa: E402
    CpuGroups,
    broker_name,
    cpu_count,
    git_revision,
    host_facts,
    machine_busy_seconds,
    postgres_facts,
)
from crm_shared.contracts import LOYALTY, PROFILES, TOUCHPOINTS_RESOLVED  # noqa: E402
from crm_shared.contracts.examples import example_event  # noqa: E402
from crm_shared.kafka import CLOUDEVENTS_CONTENT_TYPE, OutgoingRecord  # noqa: E402
from services import PARTITIONS, ServiceRun, drained, publish, run_bench  # noqa: E402

COMMAND = ".venv/bin/python bench/notify"

# (touchpoint type, extra data, share of the load)
MIX: list[tuple[str, dict[str, Any], float]] = [
    ("web.page_viewed", {}, 0.40),
    ("web.cart_updated", {}, 0.20),
    ("web.order_completed", {"revenue": 40, "currency": "EUR"}, 0.15),
    ("phone.call_completed", {"direction": "inbound"}, 0.15),
    ("email.sent", {"message_id": "m-1"}, 0.10),
]


class Counter:
    """An SMTP handler that counts what arrives."""

    def __init__(self) -> None:
        self.received = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.received += 1
        return "250 OK"


@dataclass
class Figure:
    label: str
    count: int
    wall_s: float
    cpu_s: dict[str, float]
    unit: str

    @property
    def rate(self) -> float:
        return self.count / self.wall_s


@dataclass
class Run(ServiceRun):
    name: str = "notify"
    figures: list[Figure] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)
    smtp: Counter = field(default_factory=Counter)
    current_prefix: str = ""


def records(topic: str, events: Sequence[dict[str, Any]], key: str) -> list[OutgoingRecord]:
    return [
        OutgoingRecord(
            topic=topic,
            key=(event.get(key) or event["data"]["profile_id"]).encode(),
            value=json.dumps(event).encode(),
            headers={"content-type": CLOUDEVENTS_CONTENT_TYPE},
        )
        for event in events
    ]


def touchpoints(people: list[str], count: int, rng: random.Random) -> list[dict[str, Any]]:
    types, extras, weights = zip(*MIX, strict=True)
    now = datetime.now(UTC)
    made = []
    for n, (kind, extra) in enumerate(
        rng.choices(list(zip(types, extras, strict=True)), list(weights), k=count)
    ):
        event = example_event(f"crm.touchpoint.{kind}", event_id=str(uuid.uuid4()))
        event["data"].update(extra)
        if kind == "web.order_completed":
            event["data"]["order_id"] = f"o-{n}-{uuid.uuid4().hex[:8]}"
        event["profileid"] = rng.choice(people)
        event["time"] = (now - timedelta(seconds=rng.randrange(600))).isoformat()
        made.append(event)
    return made


async def measure(run: Run, label: str, env: dict[str, str], url: str, step: Any) -> None:
    notify = run.start("crm_notify", env, f"notify-{label}")
    try:
        await notify.wait_ready()
        conn = await asyncpg.connect(url)
        try:
            groups = run.cpu_groups({"notify": [notify]})
            await step(run, notify, conn, groups)
        finally:
            await conn.close()
    finally:
        run.stop()
        await run.tidy()


async def evaluations(run: Run, notify: Any, conn: Any, groups: CpuGroups) -> None:
    args = run.args
    rng = random.Random(args.seed)
    people = [f"p-{uuid.uuid4().hex[:6]}-{n}" for n in range(args.people)]
    topic = TOUCHPOINTS_RESOLVED.full_name(run.current_prefix)
    load = records(topic, touchpoints(people, args.events, rng), "profileid")
    cpu_before, busy_before = groups.sample(), machine_busy_seconds()
    started = time.monotonic()
    await publish(run.endpoints.bootstrap, load)
    await drained(conn, [notify], len(load), args.timeout)
    wall = time.monotonic() - started
    cpu = CpuGroups.delta(cpu_before, groups.sample(), machine_busy_seconds() - busy_before)
    waiting = await conn.fetchval("SELECT count(*) FROM notifications WHERE status = 'waiting'")
    figure = Figure("trigger evaluations", len(load), wall, cpu, "touchpoints/s")
    run.figures.append(figure)
    print(
        f"bench: {figure.rate:,.0f} touchpoints/s evaluated ({len(load):,} in {wall:.1f} s), "
        f"{waiting:,} notifications waiting, CPU {fmt_cpu(cpu)}"
    )


async def emails(run: Run, notify: Any, conn: Any, groups: CpuGroups) -> None:
    args = run.args
    counter = run.smtp
    zone = {"timezone": daytime_zone()}
    people = [f"p-{uuid.uuid4().hex[:6]}-{n}" for n in range(args.emails)]
    snapshots = [person(p, f"{p}@example.org", traits=zone) for p in people]
    await publish(
        run.endpoints.bootstrap, records(PROFILES.full_name(run.current_prefix), snapshots, "")
    )
    await drained(conn, [notify], len(snapshots), args.timeout)
    now = datetime.now(UTC)
    events = [
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "crm-loyalty",
            "type": "crm.loyalty.points_expiring",
            "time": now.isoformat(),
            "subject": p,
            "data": {"profile_id": p, "points": 50, "expires_at": "2027-01-31T00:00:00Z"},
        }
        for p in people
    ]
    load = records(LOYALTY.full_name(run.current_prefix), events, "")
    before = counter.received
    cpu_before, busy_before = groups.sample(), machine_busy_seconds()
    started = time.monotonic()
    await publish(run.endpoints.bootstrap, load)
    await wait_until(
        lambda: counter.received - before >= len(load),
        timeout=args.timeout,
        interval=0.05,
        what="every email at the SMTP server",
    )
    wall = time.monotonic() - started
    cpu = CpuGroups.delta(cpu_before, groups.sample(), machine_busy_seconds() - busy_before)
    figure = Figure("emails delivered", len(load), wall, cpu, "emails/s")
    run.figures.append(figure)
    print(
        f"bench: {figure.rate:,.0f} emails/s delivered ({len(load):,} in {wall:.1f} s), "
        f"CPU {fmt_cpu(cpu)}"
    )


async def bench(run: Run) -> None:
    facts, run.postmaster = await postgres_facts(run.endpoints.database_server)
    run.machine = {
        **host_facts(),
        "Broker": broker_name(run.endpoints.bootstrap),
        **facts,
        "Partitions": str(PARTITIONS),
    }
    port = free_port()
    controller = Controller(run.smtp, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        for label, step in (("evaluate", evaluations), ("email", emails)):
            prefix, url = await run.fresh(label)
            run.current_prefix = prefix
            env = {**run.env(prefix, url), "CRM_SMTP_PORT": str(port)}
            print(f"bench: {label}")
            await measure(run, label, env, url, step)
    finally:
        controller.stop()


def fmt_cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cpu.items())


def render(run: Run, started: datetime, total_s: float) -> str:
    args = run.args
    mix = ", ".join(f"{kind.split('.')[1]} {share:.0%}" for kind, _, share in MIX)
    lines = [
        "## bench/notify",
        "",
        f"Run `{COMMAND}` (`make bench-notify`) at {started:%Y-%m-%d %H:%M} UTC on revision "
        f"{git_revision()}, {total_s:.0f} s in all.",
        "",
        "| Machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in run.machine.items()),
        "",
        f"One notify process, the example rules. Trigger evaluations: {args.events:,} resolved "
        f"touchpoints of {args.people:,} customers ({mix}), published at once, timed until "
        f"every one is handled. Emails: {args.emails:,} customers, one `points_expiring` each, "
        "timed until the SMTP server in the bench process has every message.",
        "",
        "| Measure | Count | Seconds | Rate | CPU s (per group) |",
        "|---|---|---|---|---|",
    ]
    for f in run.figures:
        lines.append(
            f"| {f.label} | {f.count:,} | {f.wall_s:.1f} | {f.rate:,.0f} {f.unit} | "
            f"{fmt_cpu(f.cpu_s)} |"
        )
    lines += [
        "",
        "How to read it:",
        f"- Everything runs on this one machine ({cpu_count()} CPUs): notify, PostgreSQL, the "
        "broker, the SMTP server and the bench share it; the CPU figures say where time went.",
        "- Email: a timer round's messages go out together (`CRM_DELIVERY_CONCURRENCY`, 32) "
        "over reused SMTP connections, from inside the round's transaction.",
        "- The broker is Tansu keeping data in memory, not a replicated Apache Kafka cluster.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=5_000, help="customers in the load")
    parser.add_argument("--events", type=int, default=30_000, help="touchpoints evaluated")
    parser.add_argument("--emails", type=int, default=2_000, help="emails delivered")
    parser.add_argument("--timeout", type=float, default=600.0, help="most seconds to wait")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep the logs, topics and databases")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_bench("notify", parse_args(argv), Run, bench, render)


if __name__ == "__main__":
    sys.exit(main())
