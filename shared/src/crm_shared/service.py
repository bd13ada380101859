"""Wiring every service shares: lifespan (pool, migrations, producer, outbox relay, FastStream
broker and its consumers), `/healthz`, `/readyz`, `/metrics`, problem details and an access log
that never records query strings (they can hold emails and phone numbers)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crm_shared.consumer import Apply, ApplyBatch, Decode, IdempotentConsumer, one_by_one
from crm_shared.contracts.topics import Topic
from crm_shared.database import Migration, apply_migrations, create_pool
from crm_shared.kafka import create_broker, create_producer, ping
from crm_shared.logging import configure_logging, get_logger
from crm_shared.outbox import OutboxRelay
from crm_shared.problems import install_problem_handlers
from crm_shared.settings import ServiceSettings, StatefulSettings
from crm_shared.timers import Clock, Fire, SystemClock, TimerRunner

log = get_logger(__name__)

# Probes and scrapes come every few seconds; they are logged at debug level only.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})

HTTP_LATENCY = Histogram(
    "crm_http_request_duration_seconds",
    "HTTP request latency by route and status",
    ["service", "method", "route", "status"],
)


@dataclass
class Runtime:
    """What a running service holds; routes reach it as `request.app.state.runtime`."""

    settings: ServiceSettings
    producer: AIOKafkaProducer
    pool: asyncpg.Pool | None = None
    relay: OutboxRelay | None = None
    consumers: list[IdempotentConsumer[Any]] = field(default_factory=list)
    clock: Clock = field(default_factory=SystemClock)
    timers: TimerRunner | None = None

    @property
    def db(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError(f"{self.settings.service_name} has no database")
        return self.pool


@dataclass(frozen=True)
class ConsumerSpec:
    name: str
    topic: Topic
    decode: Decode[Any]
    apply: Callable[[Runtime], ApplyBatch[Any]]


METRICS_EXAMPLE = (
    "# HELP crm_http_request_duration_seconds HTTP request latency by route and status\n"
    "# TYPE crm_http_request_duration_seconds histogram\n"
    'crm_http_request_duration_seconds_count{method="POST",route="/v1/events",'
    'service="ingest",status="202"} 1024.0\n'
)

# Objects a collection of the youngest generation waits for (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Fewer, cheaper cyclic collections. A batch of 500 events allocates far more than 700
    objects, so CPython's defaults collect several times per request, and each full collection
    walks every module, schema and route loaded at start-up. Freezing those (they live as long
    as the process) and collecting the youngest generation every 50,000 allocations instead of
    700 took ingest's collector time from about 30 % of its CPU to under 2 % (bench/ingest).
    Reference counting still frees everything acyclic at once; only cycles wait longer (the
    older generations keep CPython's ratios, so a full collection still comes every 100 young
    ones)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


class AccessLog:
    """Times and logs every HTTP request: method, route template, status, duration; never the
    query string. A plain ASGI middleware: Starlette's `BaseHTTPMiddleware` runs each request
    in a task group with memory streams, about a fifth of ingest's CPU for a small request."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self._app = app
        self._service = service
        self._log = get_logger(f"{service}.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before it starts a response

        async def note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, note_status)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            HTTP_LATENCY.labels(self._service, method, route, status).observe(elapsed)
            self._log.log(
                logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
                "request",
                method=method,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )


async def _start_producer(settings: ServiceSettings, wait_s: float = 60.0) -> AIOKafkaProducer:
    """Start the producer, waiting for the broker for a while (it may start after us)."""
    deadline = time.monotonic() + wait_s
    while True:
        producer = create_producer(settings)
        try:
            await producer.start()
            return producer
        except Exception as exc:
            await producer.stop()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Kafka at {settings.kafka_bootstrap} did not answer within {wait_s:.0f}s"
                ) from exc
            log.warning("waiting for Kafka", bootstrap=settings.kafka_bootstrap)
            await asyncio.sleep(1.0)


class Service:
    """One service's process: build it, add consumers and routes, then `run()`."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        title: str,
        description: str,
        migrations: list[Migration] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self._migrations = migrations
        self.clock = clock or SystemClock()
        self._consumer_specs: list[ConsumerSpec] = []
        self._fire: Callable[[Runtime], Fire] | None = None
        self.app = FastAPI(
            title=title, description=description, version="0.1.0", lifespan=self._lifespan
        )
        self.app.add_middleware(AccessLog, service=settings.service_name)
        install_problem_handlers(self.app)
        self._add_operational_routes()

    def consume(
        self, name: str, topic: Topic, decode: Decode[Any], apply: Callable[[Runtime], Apply[Any]]
    ) -> None:
        """Read `topic` with the idempotent consumer; `apply` builds the per-event effect
        function (a batch still commits in one transaction)."""
        self._consumer_specs.append(
            ConsumerSpec(name, topic, decode, lambda runtime: one_by_one(apply(runtime)))
        )

    def consume_batches(
        self,
        name: str,
        topic: Topic,
        decode: Decode[Any],
        apply: Callable[[Runtime], ApplyBatch[Any]],
    ) -> None:
        """Like `consume`, with an effect function that takes a whole batch of events."""
        self._consumer_specs.append(ConsumerSpec(name, topic, decode, apply))

    def run_timers(self, fire: Callable[[Runtime], Fire]) -> None:
        """Run this service's durable timers (crm_shared.timers); `fire` builds the function
        that handles due ones."""
        self._fire = fire

    @asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        settings = self.settings
        configure_logging(settings.log_level, settings.log_json)
        pool: asyncpg.Pool | None = None
        stateful = settings if isinstance(settings, StatefulSettings) else None
        if self._migrations is not None:
            if stateful is None:
                raise TypeError("a service with migrations needs StatefulSettings")
            pool = await create_pool(stateful.database_url, stateful.database_pool_size)
            if stateful.migrate_on_start:
                async with pool.acquire() as conn:
                    await apply_migrations(conn, self._migrations)
        producer = await _start_producer(settings)
        runtime = Runtime(settings=settings, producer=producer, pool=pool, clock=self.clock)
        broker = create_broker(settings)
        if pool is not None and stateful is not None:
            runtime.relay = OutboxRelay(
                pool,
                producer,
                service=settings.service_name,
                batch_size=stateful.outbox_batch_size,
                poll_interval_s=stateful.outbox_poll_interval_s,
                crash_after_publish=settings.fault_crash_point == "after_outbox_publish",
            )
            runtime.relay.start()
            for spec in self._consumer_specs:
                consumer = IdempotentConsumer(
                    name=spec.name,
                    topic=spec.topic.full_name(settings.topic_prefix),
                    decode=spec.decode,
                    apply=spec.apply(runtime),
                    pool=pool,
                    producer=producer,
                    relay=runtime.relay,
                    settings=stateful,
                )
                # A group per consumer (crm-notify.touchpoints, ...): a topic's rebalance
                # stops only that topic's consumers, and the groups are joined together.
                consumer.subscribe(broker, group_id=f"{settings.topic_prefix}crm-{spec.name}")
                runtime.consumers.append(consumer)
            if self._fire is not None:
                runtime.timers = TimerRunner(
                    pool,
                    self._fire(runtime),
                    self.clock,
                    service=settings.service_name,
                    relay=runtime.relay,
                    batch_size=stateful.timer_batch_size,
                    poll_interval_s=stateful.timer_poll_interval_s,
                )
        app.state.runtime = runtime
        await broker.connect()
        # Each start waits until its group has given it partitions; FastStream's `start`
        # would join the groups one after another.
        await asyncio.gather(*(consumer.start() for consumer in runtime.consumers))
        if runtime.timers is not None:
            runtime.timers.start()
        log.info(
            "service started",
            service=settings.service_name,
            port=settings.http_port,
            consumers=[c.name for c in runtime.consumers],
        )
        try:
            yield
        finally:
            if runtime.timers is not None:
                await runtime.timers.stop()
            await broker.stop()
            if runtime.relay is not None:
                await runtime.relay.stop()
            await producer.stop()
            if pool is not None:
                await pool.close()
            log.info("service stopped", service=settings.service_name)

    def _add_operational_routes(self) -> None:
        app = self.app

        @app.get(
            "/healthz",
            tags=["operations"],
            summary="The process is alive",
            description="Liveness: answers as long as the event loop runs; checks nothing else.",
            responses={
                200: {
                    "description": "alive",
                    "content": {"application/json": {"example": {"status": "ok"}}},
                }
            },
        )
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        has_database = self._migrations is not None
        checked = {"kafka": "ok", "database": "ok"} if has_database else {"kafka": "ok"}
        down = {**checked, "kafka": "unreachable"}

        @app.get(
            "/readyz",
            tags=["operations"],
            summary="Kafka and the database are reachable",
            description="Readiness: a metadata request to Kafka"
            + (" and `SELECT 1` on the database" if has_database else "")
            + ", each within 2 s. Take the instance out of the load balancer while it answers "
            "503.",
            responses={
                200: {
                    "description": "every dependency answered",
                    "content": {
                        "application/json": {"example": {"status": "ready", "checks": checked}}
                    },
                },
                503: {
                    "description": "a dependency is not reachable",
                    "content": {
                        "application/json": {"example": {"status": "not ready", "checks": down}}
                    },
                },
            },
        )
        async def readyz(request: Request) -> JSONResponse:
            runtime = runtime_of(request)
            checks: dict[str, str] = {}
            checks["kafka"] = "ok" if await ping(runtime.producer) else "unreachable"
            if runtime.pool is not None:
                try:
                    await asyncio.wait_for(runtime.pool.fetchval("SELECT 1"), 2.0)
                    checks["database"] = "ok"
                except Exception:
                    checks["database"] = "unreachable"
            ready = all(v == "ok" for v in checks.values())
            return JSONResponse(
                {"status": "ready" if ready else "not ready", "checks": checks},
                status_code=200 if ready else 503,
            )

        @app.get(
            "/metrics",
            tags=["operations"],
            summary="Prometheus metrics",
            response_class=Response,
            responses={
                200: {
                    "description": "the Prometheus text exposition format",
                    "content": {CONTENT_TYPE_LATEST: {"example": METRICS_EXAMPLE}},
                }
            },
        )
        async def metrics() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def run(self) -> None:
        """Serve HTTP and the consumers until SIGTERM/SIGINT, then shut down gracefully."""
        configure_logging(self.settings.log_level, self.settings.log_json)
        tune_garbage_collector()
        uvicorn.run(
            self.app,
            host=self.settings.http_host,
            port=self.settings.http_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=20,
        )
