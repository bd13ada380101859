"""Kafka plumbing: the FastStream broker for subscribers, the producer that publishes bytes
exactly as given (outbox, dead letters, ingest), and topic creation from the registry."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError, for_code
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from faststream.kafka import KafkaBroker

from crm_shared.contracts.topics import TOPICS, Topic
from crm_shared.logging import get_logger
from crm_shared.settings import ServiceSettings

log = get_logger(__name__)

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"


def create_broker(settings: ServiceSettings) -> KafkaBroker:
    """The FastStream broker that runs this service's subscribers. Topics are never created by
    the broker: the registry's init step owns them."""
    return KafkaBroker(
        settings.kafka_bootstrap,
        client_id=settings.service_name,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        allow_auto_create_topics=False,
        consumer_only=True,
        graceful_timeout=15.0,
        logger=get_logger(f"{settings.service_name}.broker"),
        # FastStream logs "Received"/"Processed" for every record: debug, not info, or the
        # logs grow by lines per event; the consumer logs what matters itself.
        log_level=logging.DEBUG,
    )


def create_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """acks=all always; the idempotent producer where the broker supports it (a setting,
    because the local broker does not)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.service_name}-producer",
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        linger_ms=settings.kafka_linger_ms,
    )


@dataclass(frozen=True)
class OutgoingRecord:
    """One record to publish: the topic's full name, raw key and value (None is a tombstone)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, str]
    original_headers: tuple[tuple[str, bytes | None], ...] = ()
    """Headers carried over byte for byte (dead letters keep the record's own headers)."""

    def kafka_headers(self) -> list[tuple[str, bytes | None]]:
        return [*self.original_headers, *((k, v.encode()) for k, v in self.headers.items())]


async def publish_all(producer: AIOKafkaProducer, records: Iterable[OutgoingRecord]) -> None:
    """Publish in the given order and return once the broker acknowledged every record.

    Each `send` only appends to the producer's per-partition queue, so issuing them one after
    the other keeps the order per key; awaiting all futures afterwards batches the round trips.
    """
    pending = [
        await producer.send(r.topic, r.value, key=r.key, headers=r.kafka_headers()) for r in records
    ]
    if pending:
        await asyncio.gather(*pending)


async def publish_each(
    producer: AIOKafkaProducer, records: Sequence[OutgoingRecord], timeout: float
) -> list[bool]:
    """Publish and wait at most `timeout` seconds in all; for each record, whether the broker
    acknowledged it by then. A record not acknowledged may still be written later: senders
    retry it, and consumers drop the copy.

    The records go to the producer as record batches, one per partition (more when one fills
    up), with the partition `send` would choose (the default partitioner: murmur2 of the key, as
    Kafka's Java client does), so a key lands where every other producer puts it. Records of a
    partition keep their order. One future per batch instead of one per record costs a third
    less CPU per record (bench/ingest); a record is acknowledged when its batch is.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    sent: list[tuple[asyncio.Future[object], list[int]]] = []

    async def submit(
        topic: str, partition: int, batches: list[tuple[BatchBuilder, list[int]]]
    ) -> None:
        # In order within the partition; `send_batch` waits while the partition already has a
        # batch queued, so each partition has its own chain and one busy partition does not
        # hold the others back.
        for batch, held in batches:
            sent.append((await _submit(producer, batch, topic, partition), held))

    try:
        async with asyncio.timeout_at(deadline):
            grouped = await _by_partition(producer, records)
            chains = [
                submit(topic, partition, _batches(producer, records, members))
                for (topic, partition), members in grouped.items()
            ]
            await asyncio.gather(*chains)
    except (TimeoutError, KafkaError):
        pass  # the records not handed to the producer count as not acknowledged
    acknowledged = [False] * len(records)
    if sent:
        done, _ = await asyncio.wait(
            [future for future, _ in sent], timeout=max(0.0, deadline - loop.time())
        )
        for future, held in sent:
            if future in done and not future.cancelled() and future.exception() is None:
                for i in held:
                    acknowledged[i] = True
            elif not future.done():
                # Answered "not acknowledged" already; its outcome, if it ever fails, is known.
                future.add_done_callback(_consume_outcome)
    return acknowledged


def _batches(
    producer: AIOKafkaProducer, records: Sequence[OutgoingRecord], members: list[int]
) -> list[tuple[BatchBuilder, list[int]]]:
    """The records `members` (indexes into `records`) in as few record batches as fit, in
    order, each with the indexes it holds."""
    batches: list[tuple[BatchBuilder, list[int]]] = []
    batch, held = producer.create_batch(), list[int]()
    for i in members:
        if not _append(batch, records[i]):
            batches.append((batch, held))
            batch, held = producer.create_batch(), list[int]()
            _append(batch, records[i])  # the first record always fits
        held.append(i)
    batches.append((batch, held))
    return batches


def _consume_outcome(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never retrieved


@functools.lru_cache(maxsize=65_536)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition of a keyed record among `partitions`, as aiokafka's DefaultPartitioner and
    Kafka's Java client choose it (murmur2 of the key). Remembered per key: murmur2 is pure
    Python here, and the same customers' keys come again and again."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


async def _by_partition(
    producer: AIOKafkaProducer, records: Sequence[OutgoingRecord]
) -> dict[tuple[str, int], list[int]]:
    """The indexes of the records per (topic, partition), in order."""
    partitions: dict[str, list[int]] = {}
    grouped: dict[tuple[str, int], list[int]] = {}
    for i, record in enumerate(records):
        if record.topic not in partitions:
            partitions[record.topic] = sorted(await producer.partitions_for(record.topic))
        known = partitions[record.topic]
        partition = (
            known[partition_of(record.key, len(known))]
            if record.key is not None
            # As the default partitioner places a record with no key: spread, not secret.
            else random.choice(known)  # noqa: S311
        )
        grouped.setdefault((record.topic, partition), []).append(i)
    return grouped


def _append(batch: BatchBuilder, record: OutgoingRecord) -> bool:
    return (
        batch.append(
            key=record.key, value=record.value, timestamp=None, headers=record.kafka_headers()
        )
        is not None
    )


async def _submit(
    producer: AIOKafkaProducer, batch: BatchBuilder, topic: str, partition: int
) -> asyncio.Future[object]:
    batch.close()  # closed, so that no `send` elsewhere in the process adds to it
    while True:
        try:
            future: asyncio.Future[object] = await producer.send_batch(
                batch, topic, partition=partition
            )
        except KafkaTimeoutError:
            # While the partition has a batch queued, `send_batch` waits for it to drain, and
            # under contention aiokafka 0.14 gives up long before its timeout (it subtracts the
            # time waited so far on every round). The batch was not queued: try again, within
            # the caller's deadline.
            continue
        return future


async def ping(producer: AIOKafkaProducer, timeout: float = 2.0) -> bool:
    """Whether the cluster answers a metadata request within `timeout` seconds."""
    try:
        await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout)
    except Exception:  # any failure means not reachable, which is what readiness reports
        return False
    return True


def topic_configs(topic: Topic, replication_factor: int) -> dict[str, str]:
    """Per-topic configuration: the cleanup policy, and with three or more replicas an
    acknowledged write must reach two of them (acks=all then survives one broker loss)."""
    configs: dict[str, str] = {"cleanup.policy": topic.cleanup_policy}
    if replication_factor >= 3:
        configs["min.insync.replicas"] = "2"
    return configs


class TopicCreationError(RuntimeError):
    pass


async def create_topics(
    bootstrap: str,
    *,
    prefix: str = "",
    partitions: int,
    replication_factor: int = 1,
    topics: Iterable[Topic] = TOPICS,
) -> list[str]:
    """Create the registry's topics that do not exist yet; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="crm-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if t.full_name(prefix) not in existing]
        if not wanted:
            return []
        response = await admin.create_topics(
            [
                NewTopic(
                    name=topic.full_name(prefix),
                    num_partitions=partitions,
                    replication_factor=replication_factor,
                    topic_configs=topic_configs(topic, replication_factor),
                )
                for topic in wanted
            ]
        )
        created: list[str] = []
        failures: list[str] = []
        for name, code, *message in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code != TopicAlreadyExistsError.errno:
                failures.append(
                    f"{name}: {for_code(code).__name__} {message[0] if message else ''}"
                )
        if failures:
            raise TopicCreationError("; ".join(failures))
        if created:
            log.info("topics created", topics=created, partitions=partitions)
        return created
    finally:
        await admin.close()
