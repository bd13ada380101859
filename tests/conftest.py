"""Fixtures for tests against the real broker and PostgreSQL server.

Endpoints come from CRM_KAFKA_BOOTSTRAP / CRM_DATABASE_URL when set (any Apache Kafka and any
PostgreSQL whose user may create databases), else from testcontainers when a Docker engine
answers, else from `scripts/localinfra.py up` (a private PostgreSQL and the Tansu broker).
Each test gets its own topic prefix and its own databases, so tests never see each other's data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from crm_shared.kafka import create_topics
from tests.support import Endpoints, database_url

ROOT = Path(__file__).resolve().parent.parent
TEST_PARTITIONS = 3


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


def _from_testcontainers() -> Iterator[Endpoints]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    with KafkaContainer("apache/kafka:3.9.1") as kafka, PostgresContainer("postgres:15") as pg:
        url = pg.get_connection_url(driver=None)
        yield Endpoints(
            kafka.get_bootstrap_server(), url, idempotence=True, origin="testcontainers"
        )


def _from_local_scripts() -> Endpoints:
    given_any = bool(os.environ.get("CRM_KAFKA_BOOTSTRAP") or os.environ.get("CRM_DATABASE_URL"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "localinfra.py"), "up"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.exit(f"local infrastructure did not start: {result.stderr.strip()}", returncode=3)
    state = Path(os.environ.get("CRM_STATE_DIR", ROOT / ".state"))
    env = dict(line.split("=", 1) for line in (state / "infra.env").read_text().splitlines())
    return Endpoints(
        env["CRM_KAFKA_BOOTSTRAP"],
        env["CRM_DATABASE_URL"],
        idempotence=env["CRM_KAFKA_ENABLE_IDEMPOTENCE"] == "true",
        origin="environment" if given_any else "local",
    )


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    bootstrap = os.environ.get("CRM_KAFKA_BOOTSTRAP")
    server = os.environ.get("CRM_DATABASE_URL")
    if bootstrap and server:
        idempotence = os.environ.get("CRM_KAFKA_ENABLE_IDEMPOTENCE", "true") == "true"
        yield Endpoints(bootstrap, server, idempotence=idempotence)
    elif not (bootstrap or server) and _docker_answers():
        yield from _from_testcontainers()
    else:
        # The local scripts use whichever endpoint is given and start the other one.
        yield _from_local_scripts()


@pytest.fixture
async def topic_prefix(endpoints: Endpoints) -> str:
    """A fresh set of the registry's topics for one test."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    await create_topics(endpoints.bootstrap, prefix=prefix, partitions=TEST_PARTITIONS)
    return prefix


class Databases:
    """Creates empty databases on the test server and drops them afterwards."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.created: list[str] = []

    async def create(self, label: str) -> str:
        name = f"test_{label}_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(self.server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.created.append(name)
        return database_url(self.server_url, name)

    async def drop_all(self) -> None:
        conn = await asyncpg.connect(self.server_url)
        try:
            for name in self.created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def databases(endpoints: Endpoints) -> AsyncIterator[Databases]:
    dbs = Databases(endpoints.database_server)
    yield dbs
    await dbs.drop_all()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests using the real broker or database carry the `infra` marker (`make unit` skips them)."""
    for item in items:
        if "endpoints" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.infra)
