"""The processes `bench/ingest` measures with, each its own process so that it neither shares
ingest's event loop nor hides its own cost in ingest's figures.

    load.py http --url URL --bodies FILE --concurrency N ...   # post prepared batches
    load.py raw --topic TOPIC [--topic ...] --records FILE     # a plain aiokafka producer

`http` posts every body of FILE (one `<events>\\t<JSON body>` per line) over N connections
(spread over the `--url`s given, each connection keeping to one), each body once, and prints one
JSON document: the wall time from the first post to the last answer; per request, its latency,
status and how many of its events were accepted; and the CPU seconds that this process and each
`--watch NAME=PID[,PID...]` group spent in that window, with the machine's busy time.

`raw` publishes every record of FILE (one JSON `[key, value]` per line) with the producer that
ingest itself uses (`crm_shared.kafka.create_producer`, the same settings from the same
environment), on the event loop and with the garbage collector settings ingest runs with: once
to each TOPIC, each round timed from the first send to the last acknowledgement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvloop

# A script has only its own folder on sys.path: bench/ holds `common`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import cpu_seconds, machine_busy_seconds
from crm_ingest.settings import IngestSettings
from crm_shared.kafka import CLOUDEVENTS_CONTENT_TYPE, create_producer
from crm_shared.service import tune_garbage_collector


def read_bodies(path: Path) -> list[tuple[int, bytes]]:
    bodies = []
    with path.open("rb") as lines:
        for line in lines:
            count, _, body = line.rstrip(b"\n").partition(b"\t")
            bodies.append((int(count), body))
    return bodies


def accepted_of(response: httpx.Response, events: int) -> int:
    """Events of one request that were accepted: a CloudEvents batch says so per event; a
    Segment batch answers 200 only when every message was."""
    if response.status_code == 200:
        return events
    if response.headers.get("content-type", "").startswith("application/json"):
        document = response.json()
        if isinstance(document, dict) and isinstance(document.get("accepted"), int):
            return int(document["accepted"])
    return 0


class CpuWindow:
    """CPU seconds spent between `start()` and `stop()` by this process, the watched processes
    and the whole machine (its busy time)."""

    def __init__(self, watch: Sequence[str]) -> None:
        self.pids = {
            name: [int(pid) for pid in pids.split(",") if pid]
            for name, _, pids in (w.partition("=") for w in watch)
        }
        self.before: dict[str, float] = {}

    def sample(self) -> dict[str, float]:
        found = {name: cpu_seconds(pids) for name, pids in self.pids.items()}
        found["load"] = time.process_time()
        found["machine busy"] = machine_busy_seconds()
        return found

    def start(self) -> None:
        self.before = self.sample()

    def stop(self) -> dict[str, float]:
        after = self.sample()
        return {name: after[name] - self.before[name] for name in after}


async def post_all(args: argparse.Namespace) -> dict[str, Any]:
    bodies = read_bodies(args.bodies)
    headers = {"Content-Type": args.content_type, "Authorization": args.authorization}
    warmup, measured = bodies[: args.warmup], bodies[args.warmup :]
    results: list[dict[str, Any]] = []
    timeout = httpx.Timeout(args.timeout)

    async def post(client: httpx.AsyncClient, url: str, events: int, body: bytes) -> dict[str, Any]:
        started = time.perf_counter()
        response = await client.post(url, content=body, headers=headers)
        latency_ms = (time.perf_counter() - started) * 1000
        return {
            "ms": latency_ms,
            "status": response.status_code,
            "events": events,
            "accepted": accepted_of(response, events),
        }

    async with httpx.AsyncClient(timeout=timeout) as client:
        warm = [
            await post(client, args.url[i % len(args.url)], events, body)
            for i, (events, body) in enumerate(warmup)
        ]

    queue: Iterator[tuple[int, bytes]] = iter(measured)

    async def worker(url: str) -> None:
        # One connection per worker: N workers are N clients, as N senders would be.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            for events, body in queue:
                results.append(await post(client, url, events, body))

    window = CpuWindow(args.watch)
    window.start()
    started = time.perf_counter()
    await asyncio.gather(*(worker(args.url[n % len(args.url)]) for n in range(args.concurrency)))
    wall_s = time.perf_counter() - started
    return {
        "wall_s": wall_s,
        "cpu_s": window.stop(),
        "requests": results,
        "warmup_accepted": sum(r["accepted"] for r in warm),
        "warmup_statuses": sorted({r["status"] for r in warm}),
    }


async def produce_raw(args: argparse.Namespace) -> dict[str, Any]:
    records = [
        (key.encode(), value.encode())
        for key, value in (json.loads(line) for line in args.records.read_text().splitlines())
    ]
    headers = [("content-type", CLOUDEVENTS_CONTENT_TYPE.encode())]
    producer = create_producer(IngestSettings())
    await producer.start()
    rounds = []
    try:
        # Warm-up: metadata for the topics and a connection to every partition leader.
        for topic in args.topic:
            await producer.partitions_for(topic)
        await (await producer.send(args.topic[0], b"{}", key=b"warm-up", headers=headers))
        for topic in args.topic:
            window = CpuWindow(args.watch)
            window.start()
            started = time.perf_counter()
            pending = [
                await producer.send(topic, value, key=key, headers=headers)
                for key, value in records
            ]
            await asyncio.gather(*pending)
            wall_s = time.perf_counter() - started
            rounds.append({"wall_s": wall_s, "cpu_s": window.stop()})
    finally:
        await producer.stop()
    return {"rounds": rounds, "records": len(records)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    http = sub.add_parser("http", help="post prepared bodies to ingest")
    http.add_argument("--url", action="append", required=True, help="repeat for several instances")
    http.add_argument("--bodies", type=Path, required=True)
    http.add_argument("--content-type", required=True)
    http.add_argument("--authorization", required=True)
    http.add_argument("--concurrency", type=int, default=8)
    http.add_argument("--warmup", type=int, default=0, help="bodies posted first, not measured")
    http.add_argument("--timeout", type=float, default=60.0)
    raw = sub.add_parser("raw", help="publish prepared records with a plain aiokafka producer")
    for mode in (http, raw):
        mode.add_argument(
            "--watch",
            action="append",
            default=[],
            metavar="NAME=PID[,PID...]",
            help="a process whose CPU time to report for the measured window",
        )
    raw.add_argument("--topic", action="append", required=True, help="one per round")
    raw.add_argument("--records", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "http":
        result = asyncio.run(post_all(args))
    else:
        tune_garbage_collector()  # as every service runs (crm_shared.service)
        result = uvloop.run(produce_raw(args))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
