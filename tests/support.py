"""Helpers for the infrastructure tests: endpoints, waiting, reading topics, running services."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit, urlunsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from pydantic_settings import BaseSettings

from crm_shared.service import Service

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
S = TypeVar("S", bound=BaseSettings)


@dataclass(frozen=True)
class Endpoints:
    bootstrap: str
    database_server: str
    idempotence: bool
    origin: str = "environment"
    """Where they came from: environment, testcontainers or local (scripts/localinfra.py)."""


class InfrastructureUnavailable(RuntimeError):
    """`scripts/localinfra.py up` failed; the message is its one-line explanation."""


def environment_endpoints() -> Endpoints | None:
    """Both endpoints from CRM_KAFKA_BOOTSTRAP and CRM_DATABASE_URL, when both are set."""
    bootstrap = os.environ.get("CRM_KAFKA_BOOTSTRAP")
    server = os.environ.get("CRM_DATABASE_URL")
    if not (bootstrap and server):
        return None
    idempotence = os.environ.get("CRM_KAFKA_ENABLE_IDEMPOTENCE", "true") == "true"
    return Endpoints(bootstrap, server, idempotence=idempotence)


def local_endpoints() -> Endpoints:
    """Start (or reuse) the local infrastructure; it uses whichever endpoint the environment
    gives and starts the other one."""
    given_any = bool(os.environ.get("CRM_KAFKA_BOOTSTRAP") or os.environ.get("CRM_DATABASE_URL"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "localinfra.py"), "up"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise InfrastructureUnavailable(result.stderr.strip())
    state = Path(os.environ.get("CRM_STATE_DIR", ROOT / ".state"))
    env = dict(line.split("=", 1) for line in (state / "infra.env").read_text().splitlines())
    return Endpoints(
        env["CRM_KAFKA_BOOTSTRAP"],
        env["CRM_DATABASE_URL"],
        idempotence=env["CRM_KAFKA_ENABLE_IDEMPOTENCE"] == "true",
        origin="environment" if given_any else "local",
    )


def database_url(server_url: str, database: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{database}"))


def service_env(endpoints: Endpoints, prefix: str, database: str | None = None) -> dict[str, str]:
    """The environment of a service under test: this test's topics and database."""
    env = {
        "CRM_KAFKA_BOOTSTRAP": endpoints.bootstrap,
        "CRM_KAFKA_ENABLE_IDEMPOTENCE": str(endpoints.idempotence).lower(),
        "CRM_TOPIC_PREFIX": prefix,
        "CRM_OUTBOX_POLL_INTERVAL_S": "0.2",
        "CRM_CONSUMER_RETRY_BACKOFF_S": "0.05",
        "CRM_LOG_JSON": "true",
    }
    if database is not None:
        env["CRM_DATABASE_URL"] = database
    return env


def service_settings(cls: type[S], endpoints: Endpoints, prefix: str, url: str, **extra: Any) -> S:
    """A service's settings for a test run in this process: `service_env`, then `extra`."""
    env = service_env(endpoints, prefix, url)
    fields: dict[str, Any] = {k.removeprefix("CRM_").lower(): v for k, v in env.items()}
    return cls.model_validate({**fields, **extra})


@overload
async def wait_until(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
) -> T: ...


@overload
async def wait_until(
    check: Callable[[], T], *, timeout: float = ..., interval: float = ..., what: str = ...
) -> T: ...


async def wait_until(
    check: Callable[[], Any],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> Any:
    """Poll `check` (a plain or async function) until it gives something truthy; fail with
    `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        answer = check()
        last = await answer if inspect.isawaitable(answer) else answer
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@asynccontextmanager
async def running(service: Service) -> AsyncIterator[Service]:
    """Run a service in this process (its lifespan: pool, producer, relay, consumers)."""
    async with service.app.router.lifespan_context(service.app):
        yield service


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    at_least: int = 0,
    timeout: float = 30.0,
    counting: Callable[[ConsumerRecord[bytes, bytes]], bool] | None = None,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` from the beginning up to its end (waiting for `at_least` of them,
    or of those `counting` accepts), read by a plain aiokafka consumer with no group: what any
    outside consumer would see."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = await wait_until(
            lambda: _partitions(consumer, topic), timeout=timeout, what=f"metadata of {topic}"
        )
        consumer.assign(partitions)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        fetched = True
        while True:
            ends = await consumer.end_offsets(partitions)
            positions = [await _position(consumer, tp) for tp in partitions]
            caught_up = all(pos >= ends[tp] for pos, tp in zip(positions, partitions, strict=True))
            # Past the end offsets and a fetch that found nothing more: the local broker can
            # report an end offset short of the partition's last record.
            counted = len(records if counting is None else [r for r in records if counting(r)])
            if caught_up and not fetched and counted >= at_least:
                return records
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{topic}: {counted} records after {timeout}s, wanted {at_least}"
                )
            batch = await consumer.getmany(timeout_ms=200)
            fetched = any(batch.values())
            for chunk in batch.values():
                records.extend(chunk)
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    await consumer._client.force_metadata_update()
    found = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(found)]


async def _position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
    position: int = await consumer.position(tp)
    return position


async def produce(
    bootstrap: str,
    topic: str,
    values: list[tuple[bytes | None, bytes | None]],
    headers: list[tuple[str, bytes]] | None = None,
    timestamp_ms: int | None = None,
) -> None:
    """Publish (key, value) pairs as an upstream producer would, acks=all; `timestamp_ms` sets
    the records' time (default: now)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in values:
            await producer.send_and_wait(
                topic, value, key=key, headers=headers or [], timestamp_ms=timestamp_ms
            )
    finally:
        await producer.stop()


class ServiceProcess:
    """A service as a real subprocess (`python -m crm_<name>`), for SIGKILL and end-to-end tests."""

    def __init__(self, module: str, env: dict[str, str], port: int, log: Path) -> None:
        self.module = module
        self.port = port
        self.log = log
        self._env = dict(os.environ, **env, CRM_HTTP_PORT=str(port), CRM_HTTP_HOST="127.0.0.1")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, **extra_env: str) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env={**self._env, **extra_env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def returncode(self) -> int | None:
        assert self.process is not None
        return self.process.poll()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        async def ready() -> bool:
            if self.returncode() is not None:
                return True  # no use waiting: reported below
            return await asyncio.to_thread(_http_ok, f"{self.url}/readyz")

        try:
            await wait_until(ready, timeout=timeout, what=f"{self.module} ready")
        except AssertionError as error:
            raise AssertionError(f"{error}; log:\n{self.tail()}") from None
        if (code := self.returncode()) is not None:
            raise AssertionError(f"{self.module} exited with {code}; log:\n{self.tail()}")

    async def wait_exit(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.returncode()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.module} still running after {timeout}s")
            await asyncio.sleep(0.1)
        return code

    async def metric(self, name: str, **labels: str) -> float:
        """The value of one sample from the process's /metrics (0 when absent)."""
        text = await asyncio.to_thread(_http_text, f"{self.url}/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (loopback only)
        text: str = answer.read().decode()
        return text


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310
            return bool(answer.status == 200)
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _not_a_segment_change(record: ConsumerRecord[bytes, bytes]) -> bool:
    return b'"crm.loyalty.segment_changed"' not in (record.value or b"")


async def loyalty_events(bootstrap: str, topic: str, *, at_least: int) -> list[Any]:
    """The values on `crm.loyalty.v1` but segment changes, once there are `at_least` of them.
    A customer's first order schedules the first RFM recompute at once, and its
    `segment_changed` events come whenever that timer's round does: tests of points leave them
    out."""
    records = await read_topic(bootstrap, topic, at_least=at_least, counting=_not_a_segment_change)
    return values_of([r for r in records if _not_a_segment_change(r)])


def values_of(records: list[ConsumerRecord[bytes, bytes]]) -> list[Any]:
    return [json.loads(r.value) if r.value is not None else None for r in records]
