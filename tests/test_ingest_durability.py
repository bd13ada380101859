"""No event answered 2xx is ever missing from the topic, even when the broker stops in the
middle of a load (the local broker process is SIGSTOPped, then SIGCONTed) or when ingest itself
is stopped with SIGTERM; the topic is read back and counted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest

from crm_shared.contracts import TOUCHPOINTS
from crm_shared.contracts.examples import example_event
from tests.support import (
    ROOT,
    Endpoints,
    ServiceProcess,
    free_port,
    read_topic,
    service_env,
    values_of,
    wait_until,
)

WORKERS = 8
STUCK_S = 0.5
EVENTS_PER_WORKER = 60
HEADERS = {"Content-Type": "application/cloudevents+json", "Authorization": "Bearer dev-write-key"}
BATCH = {**HEADERS, "Content-Type": "application/cloudevents-batch+json"}


def broker_pid() -> int:
    state = Path(os.environ.get("CRM_STATE_DIR", ROOT / ".state"))
    return int((state / "tansu.pid").read_text())


async def test_every_2xx_is_on_the_topic_when_the_broker_stops_mid_load(
    endpoints: Endpoints, topic_prefix: str, tmp_path: Path
) -> None:
    if endpoints.origin != "local":
        pytest.skip(f"the broker comes from {endpoints.origin}: no local process to SIGSTOP")
    ingest = ServiceProcess(
        "crm_ingest",
        {**service_env(endpoints, topic_prefix), "CRM_PRODUCE_TIMEOUT_S": "1"},
        free_port(),
        tmp_path / "ingest.log",
    )
    ingest.start()
    answers: dict[str, int | str] = {}
    timings: dict[str, tuple[float, float]] = {}
    stopped = asyncio.Event()
    window = [0.0, 0.0]  # when the broker was stopped, and when it was continued
    pid = broker_pid()
    try:
        await ingest.wait_ready()

        async def send(worker: int, http: httpx.AsyncClient) -> None:
            for n in range(EVENTS_PER_WORKER):
                event_id = f"{worker}-{n}-{uuid.uuid4().hex[:6]}"
                document = example_event("crm.touchpoint.web.page_viewed", event_id=event_id)
                started = time.monotonic()
                try:
                    answer = await http.post(
                        f"{ingest.url}/v1/events", content=json.dumps(document), headers=HEADERS
                    )
                    answers[event_id] = answer.status_code
                    timings[event_id] = (started, time.monotonic())
                    if answer.status_code == 503:
                        assert answer.headers["Retry-After"].isdigit()
                except httpx.TimeoutException:
                    answers[event_id] = "hang"

        async with httpx.AsyncClient(timeout=10) as http:
            load = asyncio.gather(*(send(w, http) for w in range(WORKERS)))
            await wait_until(lambda: len(answers) >= 100, what="the load to get going")
            os.kill(pid, signal.SIGSTOP)
            window[0] = time.monotonic()
            stopped.set()
            await wait_until(
                lambda: list(answers.values()).count(503) >= WORKERS,
                timeout=30,
                what="503 answers while the broker is stopped",
            )
            ready = await http.get(f"{ingest.url}/readyz")
            assert ready.status_code == 503, "readiness must reflect the stopped broker"
            window[1] = time.monotonic()
            os.kill(pid, signal.SIGCONT)
            stopped.clear()
            await load
    finally:
        if stopped.is_set():
            os.kill(pid, signal.SIGCONT)
        ingest.stop()

    outcomes = list(answers.values())
    assert len(outcomes) == WORKERS * EVENTS_PER_WORKER
    assert set(outcomes) <= {202, 503}, "every answer is 202 or a retryable 503, never a hang"
    assert outcomes.count(503) >= WORKERS
    accepted = {event_id for event_id, status in answers.items() if status == 202}
    assert len(accepted) >= 100
    # A stopped broker acknowledges nothing: a 202 for a request made and answered while it was
    # stopped would be an answer given before the acknowledgement. (Such events would still
    # land after SIGCONT, so counting the topic alone could not catch that.)
    during_stop = [
        event_id
        for event_id in accepted
        if window[0] < timings[event_id][0] and timings[event_id][1] < window[1]
    ]
    assert during_stop == [], f"{len(during_stop)} answered 202 while the broker was stopped"
    assert sum(window[0] < t[0] and t[1] < window[1] for t in timings.values()) >= WORKERS

    records = await read_topic(
        endpoints.bootstrap, TOUCHPOINTS.full_name(topic_prefix), at_least=len(accepted)
    )
    on_topic = {value["id"] for value in values_of(records)}
    missing = accepted - on_topic
    assert not missing, f"{len(missing)} events answered 202 are not on the topic"


async def test_sigterm_mid_load_answers_in_flight_requests_and_loses_none(
    endpoints: Endpoints, topic_prefix: str, tmp_path: Path
) -> None:
    """A deploy stops ingest with SIGTERM while senders are busy. Requests in flight at that
    moment are still answered, and every event answered 2xx, before or during the shutdown, is
    on the topic. To be sure the signal finds produces in flight, the broker is stopped first
    (SIGSTOP) until every sender waits on one, and continued once ingest is draining."""
    if endpoints.origin != "local":
        pytest.skip(f"the broker comes from {endpoints.origin}: no local process to SIGSTOP")
    # Longer than the broker is stopped: with the 5 s default a request stuck since the stop
    # could time out (a 503: correct, but not what is tested) before the broker returns.
    env = {**service_env(endpoints, topic_prefix), "CRM_PRODUCE_TIMEOUT_S": "60"}
    ingest = ServiceProcess("crm_ingest", env, free_port(), tmp_path / "ingest.log")
    ingest.start()
    answers: dict[str, int | str] = {}
    timings: dict[str, tuple[float, float]] = {}
    posting: dict[int, float] = {}  # worker -> when its current request started
    marks = {"broker stopped": 0.0, "signalled": 0.0}
    pid = broker_pid()
    try:
        await ingest.wait_ready()

        async def send(worker: int) -> None:
            # Each worker its own connection, as separate senders would have.
            async with httpx.AsyncClient(timeout=30) as http:
                for n in range(1000):
                    ids = [f"{worker}-{n}-{i}-{uuid.uuid4().hex[:6]}" for i in range(20)]
                    batch = [
                        example_event("crm.touchpoint.web.page_viewed", event_id=event_id)
                        for event_id in ids
                    ]
                    started = posting[worker] = time.monotonic()
                    try:
                        answer = await http.post(
                            f"{ingest.url}/v1/events", content=json.dumps(batch), headers=BATCH
                        )
                    except httpx.TransportError:
                        # Refused or closed once ingest stopped taking requests: not an answer.
                        answers.update(dict.fromkeys(ids, "no answer"))
                        return
                    finally:
                        posting.pop(worker, None)
                    for event_id in ids:
                        answers[event_id] = answer.status_code
                        timings[event_id] = (started, time.monotonic())

        load = asyncio.gather(*(send(w) for w in range(WORKERS)))
        await wait_until(
            lambda: list(answers.values()).count(202) >= 200, what="the load to get going"
        )
        os.kill(pid, signal.SIGSTOP)
        marks["broker stopped"] = time.monotonic()

        def all_stuck() -> bool:
            # Every sender has a request out, for half a second since the stop at least:
            # requests take milliseconds, so each one waits on the stopped broker.
            now = time.monotonic()
            return (
                now > marks["broker stopped"] + STUCK_S
                and len(posting) == WORKERS
                and all(now - started > STUCK_S for started in posting.values())
            )

        try:
            await wait_until(all_stuck, what="every sender waiting on a produce")
            marks["signalled"] = time.monotonic()
            assert ingest.process is not None
            ingest.process.send_signal(signal.SIGTERM)
            # The broker comes back only once ingest is draining: the in-flight produces must
            # outlive the start of the shutdown, not finish before it.
            await wait_until(
                lambda: "Waiting for connections to close" in ingest.log.read_text(),
                what="ingest to wait for its open requests",
            )
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.wait_for(load, timeout=60)
        # uvicorn re-raises the signal once it has shut down gracefully.
        assert await ingest.wait_exit(timeout=60) in (0, -signal.SIGTERM)
        assert "service stopped" in ingest.tail(), ingest.tail()
    finally:
        ingest.stop()

    assert set(answers.values()) <= {202, 503, "no answer"}, set(answers.values())
    accepted = {event_id for event_id, status in answers.items() if status == 202}
    in_flight = {
        event_id
        for event_id in accepted
        if timings[event_id][0] < marks["signalled"] and timings[event_id][1] > marks["signalled"]
    }
    # Every sender had a request waiting on the broker when the signal came: all were answered.
    assert len(in_flight) == WORKERS * 20, f"{len(in_flight)} in-flight events answered 202"
    records = await read_topic(
        endpoints.bootstrap, TOUCHPOINTS.full_name(topic_prefix), at_least=len(accepted)
    )
    on_topic = {value["id"] for value in values_of(records)}
    missing = accepted - on_topic
    assert not missing, f"{len(missing)} events answered 202 are not on the topic"


async def test_a_sender_that_leaves_mid_body_is_one_calm_log_line_and_nothing_published(
    endpoints: Endpoints, topic_prefix: str, tmp_path: Path
) -> None:
    """A client promises a body and hangs up half way: nothing is accepted, and ingest notes it
    in one line instead of logging a server error with a traceback."""
    ingest = ServiceProcess(
        "crm_ingest", service_env(endpoints, topic_prefix), free_port(), tmp_path / "ingest.log"
    )
    ingest.start()
    try:
        await ingest.wait_ready()
        _, writer = await asyncio.open_connection("127.0.0.1", ingest.port)
        writer.write(
            b"POST /v1/events HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer dev-write-key\r\nContent-Length: 4000\r\n\r\n"
            + json.dumps(example_event("crm.touchpoint.web.page_viewed")).encode()[:100]
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()

        def noted() -> bool:
            return "client went away" in ingest.log.read_text()

        await wait_until(noted, what="ingest to note the early hang-up")
    finally:
        ingest.stop()
    log = ingest.log.read_text()
    assert "Exception in ASGI application" not in log
    assert '"status": 499' in log or '"status":499' in log, "the access log says what happened"
    published = await read_topic(endpoints.bootstrap, TOUCHPOINTS.full_name(topic_prefix))
    assert published == []
