"""Notify's consumers and its delivery timer.

Consumers turn events into notifications: a touchpoint or a loyalty event that a trigger
names opens one (waiting, with a `deliver` timer at its due time, and a `requested` event);
a touchpoint a trigger is `cancelled_by` cancels that trigger's waiting notifications; a
tombstone on crm.profiles.v1 erases what notify holds of the person.

The `deliver` timer decides at the due moment, with what the replica of crm.profiles.v1 knows
then (`policy.decide`), and sends in the timer's transaction: the timer row stays locked
while the message goes out, so two instances never send it twice, and the `sent` record
commits with it. A crash after the send and before the commit leaves the timer due: the
message goes again, with the same Message-ID (email) — at most one duplicate per crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from crm_notify import store
from crm_notify.delivery import DeliveryFailed, Email, SmtpSender
from crm_notify.events import State, notification_event
from crm_notify.policy import Customer, History, Send, Suppress, Wait, decide
from crm_notify.rules import Rules, Trigger
from crm_notify.settings import NotifySettings
from crm_notify.store import NotificationRow
from crm_notify.templates import render
from crm_shared import replica
from crm_shared.contracts import CloudEvent, TouchpointEnvelope, derived_event_id
from crm_shared.database import DbConnection, try_lock_keys
from crm_shared.kafka import OutgoingRecord
from crm_shared.logging import get_logger
from crm_shared.service import Runtime
from crm_shared.timers import Fire, Timer, schedule

log = get_logger(__name__)

DELIVER = "deliver"
DELIVERS = frozenset({"email", "in_app"})
"""The channels with a delivery adapter in this build."""
MERGE_HOPS = 16
"""How far a chain of merged profiles is followed (profile keeps chains one step long)."""


class Emitter:
    """Collects the NotificationEvents of one transaction."""

    def __init__(self, runtime: Runtime) -> None:
        self.prefix = runtime.settings.topic_prefix
        self.source = f"crm-{runtime.settings.service_name}"
        self.records: list[OutgoingRecord] = []

    def emit(self, state: State, row: NotificationRow, at: datetime) -> None:
        self.records.append(notification_event(self.prefix, self.source, state, row, at))


def dedupe_key(trigger: Trigger, profile_id: str, cause_source: str, cause_id: str) -> str:
    """(trigger, profile, occurrence): once per customer, or once per event."""
    if trigger.occurrence == "once":
        return f"{trigger.name}:{profile_id}:once"
    return f"{trigger.name}:{profile_id}:{cause_source}:{cause_id}"


def rekeyed(row: NotificationRow, profile_id: str) -> str:
    """The dedupe key of `row` for another profile (its survivor after a merge)."""
    trigger, _, occurrence = row.dedupe_key.split(":", 2)
    return f"{trigger}:{profile_id}:{occurrence}"


async def open_notification(
    conn: DbConnection,
    out: Emitter,
    trigger: Trigger,
    profile_id: str,
    cause: CloudEvent[Any],
    now: datetime,
) -> None:
    context = cause.data.model_dump(mode="json", exclude_none=True)
    due = max(cause.time + timedelta(minutes=trigger.delay_minutes), now)
    if trigger.occurrence == "pending":
        for row in await store.waiting(conn, profile_id, [trigger.name]):
            # One waits at a time: a later event moves it, with the later event's facts.
            row.context, row.due_at, row.updated_at = context, due, now
            row.cause_source, row.cause_event_id, row.cause_time = (
                cause.source,
                cause.id,
                cause.time,
            )
            await store.save(conn, row)
            await schedule(conn, DELIVER, [(row.notification_id, due)])
            return
    key = dedupe_key(trigger, profile_id, cause.source, cause.id)
    row = NotificationRow(
        notification_id=derived_event_id("notification", key, cause.source, cause.id),
        dedupe_key=key,
        profile_id=profile_id,
        trigger=trigger.name,
        category=trigger.category,
        template=trigger.template,
        status="waiting",
        reason=None,
        channel=None,
        address=None,
        language=None,
        context=context,
        cause_source=cause.source,
        cause_event_id=cause.id,
        cause_time=cause.time,
        due_at=due,
        attempts=0,
        provider_id=None,
        created_at=now,
        updated_at=now,
        sent_at=None,
    )
    if await store.insert(conn, row):
        await schedule(conn, DELIVER, [(row.notification_id, due)])
        out.emit("requested", row, now)
        return
    duplicate = replace(
        row,
        notification_id=derived_event_id("notification", key, cause.source, cause.id, "twice"),
        status="suppressed",
        reason=f"duplicate: {trigger.name} already went or waits for this customer",
    )
    if await store.insert(conn, duplicate):
        out.emit("suppressed", duplicate, now)


async def cancel(
    conn: DbConnection, out: Emitter, triggers: list[str], profile_id: str, why: str, now: datetime
) -> None:
    for row in await store.waiting(conn, profile_id, triggers):
        row.status, row.reason, row.updated_at = "cancelled", why, now
        await store.save(conn, row)
        await schedule(conn, DELIVER, [(row.notification_id, None)])
        out.emit("suppressed", row, now)


def touchpoint_effects(rules: Rules) -> Any:
    def build(runtime: Runtime) -> Any:
        async def apply(
            conn: DbConnection, event: TouchpointEnvelope[Any]
        ) -> Sequence[OutgoingRecord]:
            assert event.profileid is not None
            profile_id = event.profileid
            await store.remember_touchpoint(
                conn, event.source, event.id, profile_id, event.type, event.time
            )
            now = runtime.clock.now()
            out = Emitter(runtime)
            action = event.action
            cancelling = [t.name for t in rules.triggers if action in t.cancelled_by]
            if cancelling:
                await cancel(conn, out, cancelling, profile_id, f"cancelled by {action}", now)
            for trigger in rules.triggers:
                if trigger.when.touchpoint == action and trigger.when.matches(event.data):
                    await open_notification(conn, out, trigger, profile_id, event, now)
            return out.records

        return apply

    return build


MEMBERSHIP_EVENTS = frozenset(
    {"points_earned", "points_redeemed", "points_restored", "tier_changed", "accounts_merged"}
)


def loyalty_effects(rules: Rules) -> Any:
    def build(runtime: Runtime) -> Any:
        async def apply(conn: DbConnection, event: CloudEvent[Any]) -> Sequence[OutgoingRecord]:
            kind = event.type.rsplit(".", 1)[1]
            profile_id: str = event.data.profile_id
            if kind in MEMBERSHIP_EVENTS:
                await store.add_loyalty_member(conn, profile_id, event.time)
            if kind == "account_erased":
                await store.erase_loyalty_member(conn, profile_id)
            now = runtime.clock.now()
            out = Emitter(runtime)
            for trigger in rules.triggers:
                if trigger.when.loyalty == kind and trigger.when.matches(event.data):
                    await open_notification(conn, out, trigger, profile_id, event, now)
            return out.records

        return apply

    return build


def profile_effects(_: Runtime) -> Any:
    async def apply(conn: DbConnection, item: Any) -> Sequence[OutgoingRecord]:
        if isinstance(item, replica.Tombstone):
            # Erased: nothing more goes to the person, and nothing of them stays here.
            waited = await store.erase(conn, item.profile_id)
            await schedule(conn, DELIVER, [(n, None) for n in waited])
        return await replica.store_profile(conn, item)

    return apply


def deliver_timers(rules: Rules, settings: NotifySettings) -> Any:
    email = SmtpSender(settings, rules.sender)
    profile_wait = timedelta(seconds=settings.profile_wait_s)
    stale_after = timedelta(seconds=settings.stale_after_s)
    longest_cap = timedelta(days=max((c.per_days for c in rules.caps), default=1))

    def build(runtime: Runtime) -> Fire:
        async def fire(
            conn: DbConnection, timers: Sequence[Timer], now: datetime
        ) -> tuple[Sequence[OutgoingRecord], int]:
            out = Emitter(runtime)
            ids = [t.key for t in timers if t.kind == DELIVER]
            rows = {r.notification_id: r for r in await store.lock_notifications(conn, ids)}
            gone = [i for i in ids if i not in rows]
            await schedule(conn, DELIVER, [(i, None) for i in gone])
            # One decision at a time per customer (caps count what went before), across
            # instances: a customer another instance is deciding for waits for a later round.
            free = await try_lock_keys(conn, {f"notify:{r.profile_id}" for r in rows.values()})
            handled = len(gone)
            for row in rows.values():
                if f"notify:{row.profile_id}" not in free:
                    continue
                if row.status != "waiting":
                    await schedule(conn, DELIVER, [(row.notification_id, None)])
                    handled += 1
                    continue
                await attempt(conn, out, row, now)
                if row.status != "waiting" or row.due_at > now:
                    handled += 1  # not one that only waits for its profile
                await store.save(conn, row)
                await schedule(
                    conn,
                    DELIVER,
                    [(row.notification_id, row.due_at if row.status == "waiting" else None)],
                )
            return out.records, handled

        async def attempt(
            conn: DbConnection, out: Emitter, row: NotificationRow, now: datetime
        ) -> None:
            def finish(status: str, reason: str | None) -> None:
                row.status, row.reason, row.updated_at = status, reason, now
                if status == "suppressed":
                    out.emit("suppressed", row, now)
                elif status == "failed":
                    out.emit("failed", row, now)

            trigger = rules.trigger(row.trigger)
            if trigger is None:
                return finish("suppressed", f"trigger {row.trigger!r} is no longer in the rules")
            first_due = row.cause_time + timedelta(minutes=trigger.delay_minutes)
            if now - first_due > stale_after:
                return finish("suppressed", f"stale: due at {first_due.isoformat()}")
            found = await follow_merges(conn, row.profile_id)
            if found is None:
                if now - row.created_at < profile_wait:
                    row.due_at = now  # looked at again next round
                    return
                return finish("suppressed", "no such profile (unknown or erased)")
            survivor, snapshot = found
            if survivor != row.profile_id:
                key = rekeyed(row, survivor)
                if await store.live_key_taken(conn, key, row.notification_id):
                    return finish("suppressed", f"duplicate: merged into {survivor}, who has it")
                row.profile_id, row.dedupe_key = survivor, key
            members = await store.loyalty_members(conn, [survivor])
            customer = Customer.of_snapshot(
                snapshot,
                frozenset({rules.loyalty_program})
                if rules.loyalty_program and members
                else frozenset(),
            )
            behind = customer.last_seen is None or customer.last_seen < row.cause_time
            # The profile's snapshot after the touchpoint may not have reached the replica yet.
            young = now - row.created_at < profile_wait
            if trigger.when.touchpoint is not None and behind and young:
                row.due_at = now  # looked at again next round
                return
            history = History(await store.history(conn, survivor, now - longest_cap))
            decision = decide(rules, trigger, customer, history, now, DELIVERS)
            if isinstance(decision, Suppress):
                return finish("suppressed", decision.reason)
            if isinstance(decision, Wait):
                row.due_at, row.reason, row.updated_at = decision.until, decision.reason, now
                return
            await send(conn, out, row, trigger, customer, decision, now)

        async def send(
            conn: DbConnection,
            out: Emitter,
            row: NotificationRow,
            trigger: Trigger,
            customer: Customer,
            decision: Send,
            now: datetime,
        ) -> None:
            context = {"profile": customer.traits, "event": row.context, "trigger": trigger.name}
            rendered = render(rules, trigger.template, customer.language(), context)
            row.channel, row.address, row.language = (
                decision.channel,
                decision.address,
                rendered.language,
            )
            row.attempts += 1
            try:
                if decision.channel == "in_app":
                    await store.add_to_inbox(
                        conn,
                        row.notification_id,
                        row.profile_id,
                        rendered.subject,
                        rendered.text,
                        now,
                    )
                    row.provider_id = None
                elif decision.channel == "email":
                    assert decision.address is not None
                    row.provider_id = await email.send(
                        Email(row.notification_id, decision.address, rendered)
                    )
                else:
                    raise DeliveryFailed(
                        f"{decision.channel}: no adapter configured", permanent=True
                    )
            except DeliveryFailed as failed:
                row.reason, row.updated_at = failed.reason, now
                if failed.permanent or row.attempts >= rules.retry.attempts:
                    row.status = "failed"
                    out.emit("failed", row, now)
                else:
                    row.due_at = now + timedelta(seconds=rules.retry.delay_s(row.attempts))
                log.warning(
                    "delivery failed",
                    notification_id=row.notification_id,
                    channel=decision.channel,
                    attempt=row.attempts,
                    permanent=failed.permanent,
                    reason=failed.reason,
                )
                return
            row.status, row.reason, row.sent_at, row.updated_at = "sent", None, now, now
            out.emit("sent", row, now)
            if decision.channel == "in_app":
                row.status = "delivered"
                out.emit("delivered", row, now)

        return fire

    return build


async def follow_merges(conn: DbConnection, profile_id: str) -> tuple[str, dict[str, Any]] | None:
    """The live profile `profile_id` is (itself, or the one it was merged into) and its
    snapshot data; None when the replica does not know it."""
    current = profile_id
    for _ in range(MERGE_HOPS):
        found = (await store.profiles(conn, [current])).get(current)
        if found is None:
            return None
        if found["merged_into"] is None:
            snapshot: dict[str, Any] = found["snapshot"]
            return current, snapshot
        current = found["merged_into"]
    return None
