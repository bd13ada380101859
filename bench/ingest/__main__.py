"""bench/ingest: how many events per second ingest takes through its batch endpoints, against
what the broker takes from a plain aiokafka producer, printed and written to its section of
bench/RESULTS.md.

    .venv/bin/python bench/ingest          # or `make bench-ingest`, which starts the infrastructure

One ingest process serves, then two (as two instances behind a load balancer would); the load
comes from another process (`bench/ingest/load.py`) that posts prepared batches over several
connections:
- `/v1/events` with `application/cloudevents-batch+json` batches of CloudEvents, and
- `/v1/batch`, Segment's batch call, with identify, page and track messages.
Then, in the same run, `load.py raw` publishes the very records ingest published, with the
producer ingest uses and the same settings, and the ratio ours / raw is printed. Every accepted
event is counted back on the topic before any figure is written.

Endpoints come from CRM_KAFKA_BOOTSTRAP / CRM_DATABASE_URL, else from `scripts/localinfra.py up`.
Topics get a run prefix and are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# A script has only its own folder on sys.path: add bench/ (for `common`) and the repository (for
# the helpers the tests use, in tests/).
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]

from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402
from tests.support import (  # noqa: E402
    Endpoints,
    ServiceProcess,
    free_port,
    read_topic,
    service_env,
)

from common import (  # noqa: E402
    ROOT,
    BenchFailure,
    Person,
    broker_name,
    cpu_count,
    describe,
    endpoints_from_environment,
    git_revision,
    host_facts,
    local_broker_pid,
    percentile,
    population,
    touchpoints,
    write_section,
)
from crm_shared.contracts import TOUCHPOINTS  # noqa: E402
from crm_shared.kafka import create_topics  # noqa: E402

COMMAND = ".venv/bin/python bench/ingest"
LOAD = Path(__file__).resolve().parent / "load.py"
PARTITIONS = 12  # the production default (CRM_TOPIC_PARTITIONS)
RAW_ROUNDS = 3
BATCH = 500  # CRM_MAX_BATCH_EVENTS, Segment's and our own batch limit
AUTHORIZATION = "Basic " + base64.b64encode(b"dev-write-key:").decode()
# The aim the issue sets, on the 2-CPU machine these runs are made on.
AIM_EVENTS_PER_S = 20_000
AIM_RATIO = 0.5
# The bench measures ingest, not its per-key rate limit (1000 events/s by default).
UNLIMITED = {"CRM_RATE_LIMIT_EVENTS_PER_S": "100000000", "CRM_RATE_LIMIT_BURST": "100000000"}


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    content_type: str
    bodies: list[tuple[int, bytes]]


@dataclass
class Result:
    name: str
    events: int
    accepted: int
    wall_s: float
    latencies_ms: list[float]
    statuses: dict[int, int]
    cpu_s: dict[str, float]
    busy_s: float
    warmup_accepted: int = 0

    @property
    def rate(self) -> float:
        return self.accepted / self.wall_s

    def quantile(self, p: float) -> float:
        return percentile(self.latencies_ms, p)


@dataclass
class Run:
    endpoints: Endpoints
    args: argparse.Namespace
    work: Path
    prefix: str = field(default_factory=lambda: f"bench-ingest-{uuid.uuid4().hex[:8]}-")
    results: list[Result] = field(default_factory=list)
    raw: Result | None = None
    raw_rounds: list[float] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)
    ingests: list[ServiceProcess] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)

    def env(self, prefix: str) -> dict[str, str]:
        return {**service_env(self.endpoints, prefix), **UNLIMITED}

    async def fresh_topic(self, label: str) -> tuple[str, str]:
        """A new, empty touchpoints topic for one measurement: (its prefix, its name). The local
        broker gets slower as a topic grows, so no measurement inherits another's records."""
        prefix = f"{self.prefix}{label}."
        self.topics += await create_topics(
            self.endpoints.bootstrap, prefix=prefix, partitions=PARTITIONS, topics=[TOUCHPOINTS]
        )
        return prefix, TOUCHPOINTS.full_name(prefix)


# --- the load ------------------------------------------------------------------------------------
def cloudevent_batches(events: list[dict[str, Any]]) -> list[tuple[int, bytes]]:
    return [
        (len(chunk), json.dumps(chunk, separators=(",", ":")).encode())
        for chunk in (events[i : i + BATCH] for i in range(0, len(events), BATCH))
    ]


def segment_message(person: Person, rng: random.Random, sent_at: str) -> dict[str, Any]:
    """One of the calls a web site makes most: page views, product views, orders, identify."""
    base = {"messageId": str(uuid.uuid4()), "timestamp": sent_at}
    kind = rng.random()
    if kind < 0.4:
        return {
            **base,
            "type": "page",
            "anonymousId": person.anonymous_id,
            "name": "Loyalty",
            "properties": {"url": "https://shop.example.org/loyalty", "title": "Loyalty"},
            "context": {"ip": "203.0.113.7", "userAgent": "Mozilla/5.0", "locale": "lt-LT"},
        }
    if kind < 0.7:
        return {
            **base,
            "type": "track",
            "anonymousId": person.anonymous_id,
            "event": "Product Viewed",
            "properties": {"product_id": f"sku-{rng.randrange(1000)}", "price": 19.9},
        }
    if kind < 0.9:
        return {
            **base,
            "type": "track",
            "userId": person.customer_id,
            "event": "Order Completed",
            "properties": {
                "order_id": f"o-{uuid.uuid4().hex[:10]}",
                "revenue": 39.8,
                "currency": "EUR",
                "products": [{"product_id": "sku-1042", "price": 19.9, "quantity": 2}],
            },
        }
    return {
        **base,
        "type": "identify",
        "userId": person.customer_id,
        "anonymousId": person.anonymous_id,
        "traits": {"email": person.email, "phone": person.phone, "first_name": "Ana"},
    }


def segment_batches(
    people: Sequence[Person], count: int, rng: random.Random
) -> list[tuple[int, bytes]]:
    sent_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    bodies = []
    for start in range(0, count, BATCH):
        messages = [
            segment_message(rng.choice(people), rng, sent_at)
            for _ in range(min(BATCH, count - start))
        ]
        body = {"batch": messages, "sentAt": sent_at}
        bodies.append((len(messages), json.dumps(body, separators=(",", ":")).encode()))
    return bodies


# --- running -------------------------------------------------------------------------------------
def load_process(*argv: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(LOAD), *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise BenchFailure(f"load.py {argv[0]} exited with {done.returncode}:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def watched(run: Run) -> list[str]:
    """`--watch` arguments: the ingest processes, and the broker when it runs on this machine."""
    pids = [str(i.process.pid) for i in run.ingests if i.process is not None]
    found = ["--watch", f"ingest={','.join(pids)}"]
    broker = local_broker_pid()
    if broker is not None:
        found += ["--watch", f"broker={broker}"]
    return found


def cpu_of(found: dict[str, Any]) -> tuple[dict[str, float], float]:
    """Per group CPU seconds, `other` for the rest of the machine's busy time, and that busy
    time itself."""
    spent = {k: float(v) for k, v in found["cpu_s"].items()}
    busy = spent.pop("machine busy")
    spent["other"] = max(0.0, busy - sum(spent.values()))
    return spent, busy


def measure_http(run: Run, scenario: Scenario, instances: int, prefix: str) -> Result:
    path = run.work / f"{scenario.path.strip('/').replace('/', '_')}-{instances}.bodies"
    with path.open("wb") as out:
        for events, body in scenario.bodies:
            out.write(b"%d\t%s\n" % (events, body))
    found = load_process(
        "http",
        *watched(run),
        *(arg for i in run.ingests for arg in ("--url", f"{i.url}{scenario.path}")),
        "--bodies",
        str(path),
        "--content-type",
        scenario.content_type,
        "--authorization",
        AUTHORIZATION,
        "--concurrency",
        str(run.args.concurrency),
        "--warmup",
        str(run.args.warmup_batches),
        env=run.env(prefix),
    )
    cpu_s, busy = cpu_of(found)
    requests = found["requests"]
    statuses: dict[int, int] = {}
    for r in requests:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    result = Result(
        name=f"{scenario.name}, {instances} instance{'s' if instances > 1 else ''}",
        events=sum(r["events"] for r in requests),
        accepted=sum(r["accepted"] for r in requests),
        wall_s=found["wall_s"],
        latencies_ms=[r["ms"] for r in requests],
        statuses=statuses,
        cpu_s=cpu_s,
        busy_s=busy,
    )
    if found["warmup_statuses"] != [scenario_ok(scenario)]:
        raise BenchFailure(f"{scenario.name}: warm-up answered {found['warmup_statuses']}")
    result.warmup_accepted = int(found["warmup_accepted"])
    return result


def scenario_ok(scenario: Scenario) -> int:
    return 200 if scenario.path == "/v1/batch" else 202


def sent_ids(scenario: Scenario) -> list[str]:
    """The event ids of a scenario's bodies: CloudEvents ids, Segment messageIds."""
    ids = []
    for _, body in scenario.bodies:
        document = json.loads(body)
        items = document["batch"] if isinstance(document, dict) else document
        ids += [str(item.get("messageId") or item.get("id")) for item in items]
    return ids


def measure_raw(run: Run, records: list[tuple[str, str]], topics: list[str]) -> Result:
    """The plain producer's rate: the best of its rounds, each to a fresh topic (the broker and
    the machine vary from one round to the next; every round is printed and recorded)."""
    path = run.work / "raw.records"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    found = load_process(
        "raw",
        *watched(run),
        *(arg for topic in topics for arg in ("--topic", topic)),
        "--records",
        str(path),
        env=run.env(run.prefix),
    )
    rounds = found["rounds"]
    run.raw_rounds = [len(records) / float(r["wall_s"]) for r in rounds]
    print("bench:   rounds: " + ", ".join(f"{rate:,.0f}" for rate in run.raw_rounds) + " events/s")
    best = min(rounds, key=lambda r: float(r["wall_s"]))
    cpu_s, busy = cpu_of(best)
    return Result(
        name=f"plain aiokafka producer, the same records (best of {len(rounds)} rounds)",
        events=len(records),
        accepted=int(found["records"]),
        wall_s=float(best["wall_s"]),
        latencies_ms=[],
        statuses={},
        cpu_s=cpu_s,
        busy_s=busy,
    )


async def delete_topics(run: Run) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=run.endpoints.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(run.topics)
    finally:
        await admin.close()


async def measure(run: Run, scenario: Scenario, instances: int) -> list[tuple[str, str]]:
    """One measurement: fresh ingest processes on a fresh topic, the load, then every accepted
    event counted back on the topic by its id. Returns the (key, value) records published."""
    label = f"{scenario.path.strip('/').replace('/', '-')}-{instances}"
    prefix, topic = await run.fresh_topic(label)
    run.ingests = [
        ServiceProcess(
            "crm_ingest", run.env(prefix), free_port(), run.work / f"ingest-{label}-{n}.log"
        )
        for n in range(instances)
    ]
    for ingest in run.ingests:
        ingest.start()
    try:
        await asyncio.gather(*(ingest.wait_ready() for ingest in run.ingests))
        print(
            f"bench: {scenario.name}: {run.args.events} events, {run.args.concurrency} "
            f"connections to {instances} ingest instance(s)"
        )
        result = await asyncio.to_thread(measure_http, run, scenario, instances, prefix)
    finally:
        for ingest in run.ingests:
            ingest.stop()
    run.results.append(result)
    print(
        f"bench:   {result.rate:,.0f} events/s, batch p50 {result.quantile(50):.1f} ms, "
        f"p99 {result.quantile(99):.1f} ms, statuses {result.statuses}"
    )
    # Counted back by id: the local broker's end offsets can fall short of a partition's last
    # record, so the topic is read, not measured.
    expected = result.accepted + result.warmup_accepted
    published = await read_topic(run.endpoints.bootstrap, topic, at_least=expected, timeout=120)
    on_topic = {json.loads(r.value)["id"] for r in published if r.value is not None}
    if len(on_topic) < expected:
        raise BenchFailure(f"{expected} events were accepted but {len(on_topic)} are on {topic}")
    if result.accepted == result.events:
        missing = [i for i in sent_ids(scenario) if i not in on_topic]
        if missing:
            raise BenchFailure(f"{len(missing)} accepted events are not on {topic}")
    print(f"bench:   all {expected} accepted events (with the warm-up) are on the topic")
    return [(r.key.decode(), r.value.decode()) for r in published if r.key and r.value]


async def bench(run: Run) -> None:
    args = run.args
    rng = random.Random(args.seed)
    people = population(args.people, rng)
    per_run = args.events + args.warmup_batches * BATCH
    published: list[tuple[str, str]] = []
    for instances in args.instances:
        # Fresh events for every measurement: each is then found on its topic by its own id.
        cloudevents = Scenario(
            "/v1/events (CloudEvents batches)",
            "/v1/events",
            "application/cloudevents-batch+json",
            cloudevent_batches(touchpoints(people, per_run, rng)),
        )
        segment = Scenario(
            "/v1/batch (Segment batches)",
            "/v1/batch",
            "application/json",
            segment_batches(people, per_run, rng),
        )
        records = await measure(run, cloudevents, instances)
        published = published or records
        await measure(run, segment, instances)
    topics = [(await run.fresh_topic(f"raw-{n}"))[1] for n in range(RAW_ROUNDS)]
    records = published[: args.events]
    print(f"bench: raw: {len(records)} of the records ingest published, one plain producer")
    run.raw = await asyncio.to_thread(measure_raw, run, records, topics)
    print(f"bench:   best {run.raw.rate:,.0f} events/s")
    run.machine = {
        **host_facts(),
        "Broker": broker_name(run.endpoints.bootstrap),
        "Partitions": str(PARTITIONS),
    }


# --- the report ---------------------------------------------------------------------------------
def aim(result: Result, raw: Result) -> str:
    fast = result.rate >= AIM_EVENTS_PER_S
    close = result.rate / raw.rate >= AIM_RATIO
    if fast and close:
        return "met"
    return "not met: " + " and ".join(
        what for what, ok in (("below the rate", fast), ("below the ratio", close)) if not ok
    )


def render(run: Run, started: datetime, total_s: float) -> str:
    assert run.raw is not None
    cpus = cpu_count()
    command = " ".join([COMMAND, *sys.argv[1:]])
    lines = [
        "## Ingest: batches through HTTP against a plain producer (bench/ingest)",
        "",
        f"Written by `{command}` (`make bench-ingest`).",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; the whole run took {total_s:.0f} s",
        f"- Revision: {git_revision()}",
        *(f"- {k}: {v}" for k, v in run.machine.items()),
        f"- Load: {run.args.events} events per endpoint in batches of {BATCH}, posted by a "
        f"separate process over {run.args.concurrency} connections after "
        f"{run.args.warmup_batches} warm-up batch(es), to one ingest process and then to "
        f"several (instances: {', '.join(map(str, run.args.instances))}; each connection keeps "
        "to one instance, as behind a load balancer); the per-key rate limit lifted",
        "",
        "| Measurement | Events | Wall (s) | Events/s | Ours / raw | Batch p50 (ms) "
        "| Batch p99 (ms) | Answers |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in run.results:
        answers = ", ".join(f"{n}× {s}" for s, n in sorted(r.statuses.items()))
        lines.append(
            f"| {r.name} | {r.accepted} | {r.wall_s:.2f} | {r.rate:,.0f} | "
            f"{r.rate / run.raw.rate:.2f} | {r.quantile(50):.1f} | {r.quantile(99):.1f} "
            f"| {answers} |"
        )
    raw = run.raw
    lines.append(
        f"| {raw.name} | {raw.accepted} | {raw.wall_s:.2f} | {raw.rate:,.0f} | 1.00 | – | – | – |"
    )
    groups = list(run.results[0].cpu_s)
    lines += [
        "",
        f"The aim: at least {AIM_EVENTS_PER_S:,} events/s and a ratio of at least {AIM_RATIO} "
        f"on a {cpus}-CPU machine (the CPUs this run had). "
        + "; ".join(
            f"{r.name}: {aim(r, raw)} ({r.rate:,.0f} events/s, ratio {r.rate / raw.rate:.2f})"
            for r in run.results
        )
        + ". One ingest process uses one CPU at most (Python runs one thread at a time); two "
        "instances, as behind a load balancer, use both.",
        "",
        "CPU seconds per process group during each measurement (user + system, from /proc), "
        f"and how busy the whole machine ({cpus} CPUs) was:",
        "",
        "| Measurement | " + " | ".join(groups) + " | Machine busy | CPU µs per event |",
        "|---|" + "---:|" * len(groups) + "---:|---:|",
    ]
    for r in [*run.results, raw]:
        cells = " | ".join(f"{r.cpu_s.get(g, 0.0):.2f}" for g in groups)
        busy = r.busy_s / (r.wall_s * cpus) * 100
        # What one event cost the process that turned it into a record: ingest, or the plain
        # producer (the load process of the raw row).
        worker = r.cpu_s["load" if r is raw else "ingest"]
        lines.append(f"| {r.name} | {cells} | {busy:.0f} % | {worker / r.accepted * 1e6:.0f} |")
    lines += [
        "",
        "How to read these:",
        "",
        "- Every figure counts events the broker acknowledged (acks=all) before ingest answered; "
        "the run fails unless every accepted event is found on the topic afterwards.",
        "- Ours / raw compares ingest with a plain aiokafka producer publishing the very records "
        "ingest published, with ingest's producer settings, event loop (uvloop) and garbage "
        "collector settings, in one process that sends all of them and then awaits every "
        "acknowledgement: the broker's rate for these messages from Python, with no HTTP, no "
        "validation and no per-request wait. It is the best of "
        f"{len(run.raw_rounds)} rounds ("
        + ", ".join(f"{rate:,.0f}" for rate in run.raw_rounds)
        + " events/s), each to a fresh topic like every other measurement here: the local "
        "broker slows down as a topic grows.",
        "- Everything shares the machine: the broker, ingest and the load process. The CPU table "
        "shows where the time went while each measurement ran; `load` is the process that "
        "posted the batches (for the raw row: the plain producer), `other` the rest of the "
        "machine. CPU µs per event is ingest's CPU time per accepted event (for the raw row: "
        "the producer's).",
        "- The broker is Tansu keeping data in memory, not a replicated Apache Kafka cluster: an "
        "acknowledgement costs no disk and no replication here.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000, help="events per endpoint")
    parser.add_argument("--concurrency", type=int, default=8, help="connections of the load")
    parser.add_argument(
        "--instances",
        type=lambda v: [int(n) for n in v.split(",")],
        default=[1, 2],
        help="ingest processes to measure with, comma separated (default: 1,2)",
    )
    parser.add_argument("--warmup-batches", type=int, default=10, help="batches before measuring")
    parser.add_argument("--people", type=int, default=5000, help="people behind the events")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep ingest's log, the load files and the topics, to look into a run",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="crm-bench-ingest-"))
    run: Run | None = None
    try:
        run = Run(endpoints_from_environment(), args, work)
        asyncio.run(bench(run))
        total_s = time.perf_counter() - started
        report = render(run, started_at, total_s)
        write_section("ingest", report)
    except Exception as exc:  # any failure ends the run; say what and where to look
        print(f"bench: FAILED: {describe(exc)}", file=sys.stderr)
        print(f"bench: ingest's log and the load files are in {work}", file=sys.stderr)
        return 1
    finally:
        if run is not None:
            for ingest in run.ingests:
                ingest.stop()
            if run.topics and not args.keep:
                try:
                    asyncio.run(delete_topics(run))
                except Exception as exc:  # reported; the run's outcome stands
                    print(f"bench: could not delete the topics: {describe(exc)}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work)
    print(f"bench: done in {total_s:.0f} s; wrote its section of {RESULTS_NAME}")
    return 0


RESULTS_NAME = str((ROOT / "bench" / "RESULTS.md").relative_to(ROOT))

if __name__ == "__main__":
    raise SystemExit(main())
