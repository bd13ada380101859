"""`crm-admin`, as ops run it (compose init, Kubernetes job): topics and migrations, twice."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from crm_shared.contracts import TOPICS
from tests.conftest import Databases
from tests.support import Endpoints


def admin(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crm_shared.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_migrate_applies_each_service_once_on_a_fresh_database_then_nothing(
    databases: Databases,
) -> None:
    for name, expected in [
        (
            "profile",
            "plumbing/0001_plumbing, profile/0001_init, profile/0002_identity_graph, "
            "profile/0003_activity, profile/0004_erasure, profile/0005_erasure_log, "
            "profile/0006_memberships, profile/0007_profiles_fillfactor",
        ),
        (
            "loyalty",
            "plumbing/0001_plumbing, profile_replica/0001_profile_replica, "
            "profile_replica/0002_merged_into, timers/0001_timers, "
            "loyalty/0001_init, loyalty/0002_ledger, loyalty/0003_redemptions, "
            "loyalty/0004_merges, loyalty/0005_segments, loyalty/0006_erased_profiles, "
            "loyalty/0007_ledger_sources",
        ),
        (
            "notify",
            "plumbing/0001_plumbing, profile_replica/0001_profile_replica, "
            "profile_replica/0002_merged_into, timers/0001_timers, "
            "notify/0001_init, notify/0002_notifications, notify/0003_provider_ids, "
            "notify/0004_erased, notify/0005_sms_statuses",
        ),
    ]:
        url = await databases.create(name)
        first = admin("migrate", name, "--database-url", url)
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == f"{name}: applied {expected}"
        again = admin("migrate", name, env={"CRM_DATABASE_URL": url})
        assert again.stdout.strip() == f"{name}: applied nothing (up to date)", again.stderr
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(
                expected.split(", ")
            )
        finally:
            await conn.close()
    stateless = admin("migrate", "ingest")
    assert stateless.stdout.strip() == "ingest is stateless: nothing to migrate"
    unknown = admin("migrate", "billing")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().startswith("crm-admin: no installed service named 'billing'")


async def test_create_topics_makes_the_registry_with_its_policies_and_is_idempotent(
    endpoints: Endpoints,
) -> None:
    prefix = f"adm{uuid.uuid4().hex[:10]}."
    env = {"CRM_KAFKA_BOOTSTRAP": endpoints.bootstrap, "CRM_TOPIC_PREFIX": prefix}
    first = admin("create-topics", "--partitions", "2", env=env)
    assert first.returncode == 0, first.stderr
    assert all(t.full_name(prefix) in first.stdout for t in TOPICS)
    again = admin("create-topics", "--partitions", "2", env=env)
    assert again.stdout.strip().endswith("none (all exist)")

    client = AIOKafkaAdminClient(bootstrap_servers=endpoints.bootstrap)
    await client.start()
    try:
        described = {
            t["topic"]: t
            for t in await client.describe_topics([t.full_name(prefix) for t in TOPICS])
        }
    finally:
        await client.close()
    assert {name: len(t["partitions"]) for name, t in described.items()} == {
        t.full_name(prefix): 2 for t in TOPICS
    }
