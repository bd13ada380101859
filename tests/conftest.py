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
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from crm_shared.kafka import create_topics
from tests.support import (
    Endpoints,
    InfrastructureUnavailable,
    database_url,
    environment_endpoints,
    local_endpoints,
)

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


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    given = environment_endpoints()
    if given is not None:
        yield given
    elif not (os.environ.get("CRM_KAFKA_BOOTSTRAP") or os.environ.get("CRM_DATABASE_URL")) and (
        _docker_answers()
    ):
        yield from _from_testcontainers()
    else:
        try:
            yield local_endpoints()
        except InfrastructureUnavailable as refusal:
            pytest.exit(f"local infrastructure did not start: {refusal}", returncode=3)


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
