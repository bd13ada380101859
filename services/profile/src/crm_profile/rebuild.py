"""Rebuild profile's database from `crm.touchpoints.v1`, from the beginning.

    CRM_DATABASE_URL=postgresql://.../crm_profile_rebuilt crm-profile rebuild

The target database must hold no profiles yet (it is migrated first). Every record is applied
as the live consumer applies it, in batches of `CRM_CONSUMER_BATCH_SIZE` a transaction, and
claimed in processed_events under the live consumer's name, so the service can later run on
the rebuilt database without handling anything twice. Nothing is published: the live database
already did. Records the live consumer dead-letters (not valid touchpoints, identifier kinds
not in CRM_IDENTIFIER_KINDS) are skipped and counted.

A profile's version rises once per transaction that changed it, and the rebuild's transactions
are larger than the live consumer's, so it would count lower. Downstream services keep a
profile's highest version and take a snapshot's id from its version: a rebuilt profile's next
snapshots would be dropped there as old or as copies. So the rebuild finally reads
`crm.profiles.v1` and lifts each profile's version to the highest one published for it; the
next change is then published above anything downstream has seen.

The topic must still hold every touchpoint: its retention (retention.ms, retention.bytes) has
to be unlimited, or at least longer than the history profiles should keep. It then also holds
the touchpoints of people erased since: pass `--erasures-from` the live database, and records
about them, written or dated before the erasure, are left out as the live consumer leaves them
out (`crm_profile.domain.erasure.erased_since`; the erasure log is carried over); without it,
erased people
come back. Identity decisions
that depend on the order of events on different partitions (which profile id survives a merge,
which link a limit refuses) follow the order the rebuild reads; people, traits, consents and
activity come out the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from crm_profile.app import migrations
from crm_profile.handlers import Arrival, decode_arrival, touchpoint_effects
from crm_profile.settings import ProfileSettings
from crm_profile.store import erasure_log
from crm_shared.consumer import Contended, Received, Undecodable, claim
from crm_shared.contracts import PROFILES, TOUCHPOINTS, Topic
from crm_shared.database import apply_migrations, create_pool
from crm_shared.kafka import create_producer
from crm_shared.logging import configure_logging, get_logger
from crm_shared.service import Runtime

log = get_logger(__name__)

CONSUMER = "profile.touchpoints"  # the live consumer's name: its claims carry over
CONTENDED_TRIES = 10


class RebuildRefused(RuntimeError):
    pass


@dataclass
class Report:
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    skipped: int = 0
    forgotten: int = 0
    """Records of erased people, dated or written before their erasure."""
    versions_lifted: int = 0
    """Rebuilt profiles whose version was raised to the highest published on crm.profiles.v1."""


async def rebuild(
    settings: ProfileSettings,
    *,
    erasures: dict[str, datetime] | None = None,
    idle_s: float = 2.0,
) -> Report:
    """Apply every record of the touchpoints topic to the database of `settings`, leaving out
    what `erasures` (identifier hash: when it was erased) says was forgotten."""
    erasures = erasures or {}
    pool = await create_pool(settings.database_url, 2)
    producer = create_producer(settings)  # never started: effects only return what to publish
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn, migrations())
            if await conn.fetchval("SELECT count(*) FROM profiles"):
                raise RebuildRefused(
                    "the target database already holds profiles; rebuild into an empty one"
                )
            await conn.executemany(
                "INSERT INTO erased_identifiers (identifier_hash, erased_at) VALUES ($1, $2)",
                list(erasures.items()),
            )
        left_out: list[str] = []  # this attempt's touchpoints of erased people
        apply = touchpoint_effects(
            Runtime(settings=settings, producer=producer), lambda event: left_out.append(event.id)
        )
        report = Report()
        pending: list[Received[Arrival]] = []
        decode = decode_arrival(settings.identifier_kinds)

        async def flush() -> None:
            """The pending events in one transaction, as the live consumer applies a batch
            (claimed under its name; what they would publish is dropped)."""
            for _ in range(CONTENDED_TRIES):
                left_out.clear()
                try:
                    async with pool.acquire() as conn, conn.transaction():
                        fresh = await claim(conn, CONSUMER, pending)
                        if fresh:
                            await apply(conn, fresh)
                    break
                except Contended:
                    continue
            else:
                raise RuntimeError("a batch kept meeting concurrent changes")
            report.applied += len(fresh) - len(left_out)
            report.forgotten += len(left_out)
            report.duplicates += len(pending) - len(fresh)
            pending.clear()

        async for record in _every_record(settings, TOUCHPOINTS, idle_s=idle_s):
            report.records += 1
            try:
                received = decode(record)  # what the live consumer would read
            except (ValidationError, Undecodable):
                report.skipped += 1  # the live consumer dead-lettered it
                continue
            pending.append(received)
            if len(pending) >= settings.consumer_batch_size:
                await flush()
        if pending:
            await flush()
        published = await published_versions(settings, idle_s=idle_s)
        async with pool.acquire() as conn:
            lifted = await conn.fetch(
                "UPDATE profiles AS p SET version = v.version "
                "FROM unnest($1::text[], $2::bigint[]) AS v(id, version) "
                "WHERE p.profile_id = v.id AND p.version < v.version RETURNING p.profile_id",
                list(published),
                list(published.values()),
            )
        report.versions_lifted = len(lifted)
        return report
    finally:
        await pool.close()


async def published_versions(settings: ProfileSettings, *, idle_s: float) -> dict[str, int]:
    """The highest version of each profile's snapshots on crm.profiles.v1."""
    versions: dict[str, int] = {}
    async for record in _every_record(settings, PROFILES, idle_s=idle_s):
        if record.key is None or record.value is None:
            continue  # a tombstone: the profile was erased, and its id is not used again
        try:
            version = int(json.loads(record.value)["data"]["version"])
        except (ValueError, KeyError, TypeError):
            continue  # not a snapshot this version can read; it raises nothing
        profile_id = record.key.decode()
        versions[profile_id] = max(version, versions.get(profile_id, 0))
    return versions


async def _every_record(settings: ProfileSettings, topic_spec: Topic, *, idle_s: float) -> Any:
    """Every record of the topic, from the beginning, until a fetch past the end offsets taken
    at the start comes back empty for `idle_s` (some brokers report end offsets short)."""
    topic = topic_spec.full_name(settings.topic_prefix)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        partitions = sorted(await _partitions(consumer, topic))
        if not partitions:
            raise RebuildRefused(f"topic {topic} not found")
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        ends = await consumer.end_offsets(consumer.assignment())
        await consumer.seek_to_beginning()
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000), max_records=1000)
            records: list[ConsumerRecord[bytes, bytes]] = [r for rs in batch.values() for r in rs]
            for record in records:
                yield record
            if not records:
                positions = [await consumer.position(tp) for tp in ends]
                if all(pos >= end for pos, end in zip(positions, ends.values(), strict=True)):
                    return
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    found: set[int] = consumer.partitions_for_topic(topic) or set()
    return found


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="crm-profile rebuild",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--database-url", help="the database to rebuild into (default: CRM_DATABASE_URL)"
    )
    parser.add_argument(
        "--erasures-from",
        metavar="DATABASE_URL",
        help="the live database, whose erasure log says what to leave out",
    )
    args = parser.parse_args(argv)
    overrides = {"database_url": args.database_url} if args.database_url else {}
    settings = ProfileSettings(**overrides)
    configure_logging(settings.log_level, settings.log_json)
    if args.erasures_from is None:
        print(
            "crm-profile rebuild: no --erasures-from: people erased since their touchpoints "
            "were written will come back",
            file=sys.stderr,
        )
    started = datetime.now()
    try:
        report = asyncio.run(_run(settings, args.erasures_from))
    except RebuildRefused as exc:
        print(f"crm-profile rebuild: {exc}", file=sys.stderr)
        return 2
    took = (datetime.now() - started).total_seconds()
    print(
        f"rebuilt from {report.records} records in {took:.0f} s: {report.applied} applied, "
        f"{report.duplicates} duplicates, {report.skipped} not valid touchpoints (skipped), "
        f"{report.forgotten} of erased people (left out); {report.versions_lifted} versions "
        "lifted to the highest published"
    )
    return 0


async def _run(settings: ProfileSettings, erasures_from: str | None) -> Report:
    erasures: dict[str, datetime] = {}
    if erasures_from is not None:
        live = await create_pool(erasures_from, 1)
        try:
            erasures = await erasure_log(live)
        finally:
            await live.close()
    return await rebuild(settings, erasures=erasures)
