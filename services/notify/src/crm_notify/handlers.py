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

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from crm_notify import store
from crm_notify.calendar import add_business_days
from crm_notify.delivery import (
    UNREACHABLE_NUMBER_CODES,
    DeliveryFailed,
    Email,
    SmsSender,
    SmtpSender,
    WebhookSender,
)
from crm_notify.events import State, bounce_touchpoint, notification_event, sms_failed_touchpoint
from crm_notify.metrics import (
    DELIVERY_SECONDS,
    NOTIFICATIONS,
    QUEUE_DEPTH,
    SUPPRESSED,
    reason_kind,
)
from crm_notify.policy import Customer, History, Suppress, Wait, decide
from crm_notify.rules import Rules, Trigger
from crm_notify.settings import NotifySettings
from crm_notify.store import NotificationRow
from crm_notify.templates import Rendered, render, with_unsubscribe
from crm_notify.unsubscribe import Unsubscribe, token_for
from crm_shared import replica
from crm_shared.consumer import transient, unavailable
from crm_shared.contracts import CloudEvent, TouchpointEnvelope, derived_event_id
from crm_shared.contracts.touchpoints import contact_direction
from crm_shared.database import DbConnection, after_commit, try_lock_keys
from crm_shared.kafka import OutgoingRecord
from crm_shared.logging import get_logger
from crm_shared.service import Runtime
from crm_shared.timers import Fire, Timer, schedule

log = get_logger(__name__)

DELIVER = "deliver"
SMS_STATUS = "sms_status"
SMS_STATUS_RETRY = timedelta(seconds=5)
SMS_STATUS_PATIENCE = timedelta(minutes=10)
"""How long a status callback waits for its message's row before it is dropped."""
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
        channel, reason = row.channel or "none", row.reason
        waited = (at - row.due_at).total_seconds()

        def count() -> None:
            NOTIFICATIONS.labels(state, channel).inc()
            if state == "suppressed":
                SUPPRESSED.labels(reason_kind(reason)).inc()
            if state == "sent":
                DELIVERY_SECONDS.labels(channel).observe(max(waited, 0.0))

        after_commit(count)


def dedupe_key(trigger: Trigger, profile_id: str, cause_source: str, cause_id: str) -> str:
    """(trigger, profile, occurrence): once per customer, or once per event."""
    if trigger.occurrence == "once":
        return f"{trigger.name}:{profile_id}:once"
    return f"{trigger.name}:{profile_id}:{cause_source}:{cause_id}"


def rekeyed(row: NotificationRow, profile_id: str) -> str:
    """The dedupe key of `row` for another profile (its survivor after a merge)."""
    trigger, _, occurrence = row.dedupe_key.split(":", 2)
    return f"{trigger}:{profile_id}:{occurrence}"


@dataclass(frozen=True)
class Go:
    """A message ready to go out: the row it belongs to, its channel, and the send."""

    row: NotificationRow
    channel: str
    deliver: Callable[[], Awaitable[str | None]]


@dataclass
class Batch:
    """What one timer round sends, and what it has decided to send to whom so far (caps count
    it before the sends are recorded)."""

    sends: list[Go] = field(default_factory=list)
    history: dict[str, dict[tuple[str, str], list[datetime]]] = field(default_factory=dict)
    _rows: set[str] = field(default_factory=set)

    def add(self, go: Go) -> None:
        self.sends.append(go)
        self._rows.add(go.row.notification_id)

    def __contains__(self, row: object) -> bool:
        return isinstance(row, NotificationRow) and row.notification_id in self._rows


async def apply_sms_status(
    conn: DbConnection, out: Emitter, sid: str, state: str, code: str | None, now: datetime
) -> bool:
    """Apply a final SMS status to its message; False when no sent message has that provider
    id yet (the round that sent it may not have committed): then the status is kept and a
    timer tries again."""
    row = await store.by_provider_id(conn, "sms", sid)
    if row is None:
        await store.keep_sms_status(conn, sid, state, code, now)
        await schedule(conn, SMS_STATUS, [(sid, now + SMS_STATUS_RETRY)])
        return False
    if row.status == "sent":
        if state == "delivered":
            row.status, row.updated_at = "delivered", now
            out.emit("delivered", row, now)
        else:
            row.status, row.updated_at = "failed", now
            row.reason = f"sms: {state} (error {code or 'none'})"
            out.emit("failed", row, now)
            if code in UNREACHABLE_NUMBER_CODES:
                out.records.append(sms_failed_touchpoint(out.prefix, row, now, code))
        await store.save(conn, row)
    await store.drop_sms_status(conn, sid)
    await schedule(conn, SMS_STATUS, [(sid, None)])
    return True


def first_due(rules: Rules, trigger: Trigger, cause_time: datetime) -> datetime:
    """When a trigger's notification is due, from the time of the event that started it."""
    due = cause_time + timedelta(minutes=trigger.delay_minutes)
    if trigger.delay_business_days:
        days = rules.business_days
        zone = ZoneInfo(days.timezone or rules.timezone)
        due = add_business_days(due, trigger.delay_business_days, zone, days.country)
    return due


async def open_notification(
    conn: DbConnection,
    out: Emitter,
    rules: Rules,
    trigger: Trigger,
    profile_id: str,
    cause: CloudEvent[Any],
    now: datetime,
) -> None:
    context = cause.data.model_dump(mode="json", exclude_none=True)
    due = max(first_due(rules, trigger, cause.time), now)
    if trigger.occurrence in ("pending", "first"):
        for row in await store.waiting(conn, [profile_id], [trigger.name]):
            # One waits at a time. `pending`: a later event moves it, with its facts;
            # `first`: the first event's clock keeps running (an unanswered call stays so).
            if trigger.occurrence == "pending":
                row.context, row.due_at, row.updated_at = context, due, now
                row.cause_source, row.cause_event_id = cause.source, cause.id
                row.cause_time = cause.time
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
    conn: DbConnection,
    out: Emitter,
    triggers: list[str],
    profile_id: str,
    why: str,
    now: datetime,
    cause_time: datetime,
) -> None:
    """Cancel the profile's waiting notifications of `triggers` that an event at `cause_time`
    answers (those started by something later stay), also those still filed under profiles
    merged into it (a guest's cart, then an order after logging in)."""
    family = [profile_id, *await store.merged_into(conn, profile_id)]
    for row in await store.waiting(conn, family, triggers):
        if row.cause_time > cause_time:
            continue
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
            if await store.erased(conn, profile_id):
                return []  # late news of an erased person: nothing opens, nothing is kept
            now = runtime.clock.now()
            out = Emitter(runtime)
            action = event.action
            way = contact_direction(event)
            cancelling = [
                t.name
                for t in rules.triggers
                if action in t.cancelled_by or (way is not None and t.cancelled_by_contact == way)
            ]
            if cancelling:
                why = f"cancelled by {event.type.removeprefix('crm.touchpoint.')}"
                await cancel(conn, out, cancelling, profile_id, why, now, event.time)
            for trigger in rules.triggers:
                if (trigger.when.touchpoint == action and trigger.when.matches(event.data)) or (
                    way is not None and trigger.when.contact == way
                ):
                    await open_notification(conn, out, rules, trigger, profile_id, event, now)
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
            if await store.erased(conn, profile_id):
                return []
            if kind in MEMBERSHIP_EVENTS:
                await store.add_loyalty_member(conn, profile_id, event.time)
            if kind == "account_erased":
                await store.erase_loyalty_member(conn, profile_id)
            now = runtime.clock.now()
            out = Emitter(runtime)
            for trigger in rules.triggers:
                if trigger.when.loyalty == kind and trigger.when.matches(event.data):
                    await open_notification(conn, out, rules, trigger, profile_id, event, now)
            return out.records

        return apply

    return build


def profile_effects(runtime: Runtime) -> Any:
    async def apply(conn: DbConnection, item: Any) -> Sequence[OutgoingRecord]:
        if isinstance(item, replica.Tombstone):
            # Erased: nothing more goes to the person, and nothing of them stays here.
            waited = await store.erase(conn, item.profile_id, runtime.clock.now())
            await schedule(conn, DELIVER, [(n, None) for n in waited])
        return await replica.store_profile(conn, item)

    return apply


def deliver_timers(rules: Rules, settings: NotifySettings) -> Any:
    email = SmtpSender(settings, rules.sender)
    sms = (
        SmsSender(
            settings.sms_api_url,
            settings.sms_account_sid or "",
            settings.sms_auth_token.get_secret_value() if settings.sms_auth_token else "",
            settings.sms_from or "",
            settings.sms_status_callback(),
            settings.webhook_timeout_s,
        )
        if settings.sms_api_url
        else None
    )
    delivers = frozenset({"email", "in_app"} | ({"sms"} if sms is not None else set()))
    concurrency = asyncio.Semaphore(settings.delivery_concurrency)
    webhook = (
        WebhookSender(
            settings.webhook_url,
            settings.webhook_secret.get_secret_value().encode() if settings.webhook_secret else b"",
            settings.webhook_timeout_s,
        )
        if settings.webhook_url
        else None
    )
    unsubscribe_secret = settings.unsubscribe_secret.get_secret_value().encode()
    profile_wait = timedelta(seconds=settings.profile_wait_s)
    stale_after = timedelta(seconds=settings.stale_after_s)
    longest_cap = timedelta(days=max((c.per_days for c in rules.caps), default=1))

    def build(runtime: Runtime) -> Fire:
        async def fire(
            conn: DbConnection, timers: Sequence[Timer], now: datetime
        ) -> tuple[Sequence[OutgoingRecord], int]:
            out = Emitter(runtime)
            handled = 0
            for timer in timers:
                if timer.kind != SMS_STATUS:
                    continue
                kept = await store.kept_sms_status(conn, timer.key)
                if kept is None:
                    await schedule(conn, SMS_STATUS, [(timer.key, None)])
                elif (
                    not await apply_sms_status(
                        conn, out, timer.key, kept["state"], kept["error_code"], now
                    )
                    and now - kept["received_at"] > SMS_STATUS_PATIENCE
                ):
                    log.warning("sms status for an unknown message dropped", sid=timer.key)
                    await store.drop_sms_status(conn, timer.key)
                    await schedule(conn, SMS_STATUS, [(timer.key, None)])
                handled += 1
            ids = [t.key for t in timers if t.kind == DELIVER]
            locked, gone = await store.lock_notifications(conn, ids)
            rows = {r.notification_id: r for r in locked}
            await schedule(conn, DELIVER, [(i, None) for i in sorted(gone)])
            # One decision at a time per customer (caps count what went before), across
            # instances: a customer another instance is deciding for waits for a later round.
            free = await try_lock_keys(conn, {f"notify:{r.profile_id}" for r in rows.values()})
            handled += len(gone)
            batch = Batch()
            for row in rows.values():
                if f"notify:{row.profile_id}" not in free:
                    continue
                if row.status != "waiting":
                    await schedule(conn, DELIVER, [(row.notification_id, None)])
                    handled += 1
                    continue
                await guarded_attempt(conn, out, row, now, batch)
                if row.status != "waiting" or row.due_at > now or row in batch:
                    handled += 1  # not one that only waits for its profile
                if row not in batch:
                    await record(conn, row)
            # The messages go out together (the network waits overlap), then each is recorded.
            outcomes = await asyncio.gather(*(send(go) for go in batch.sends))
            for go, outcome in zip(batch.sends, outcomes, strict=True):
                finish(out, go.row, go.channel, outcome, now)
                await record(conn, go.row)
            depth = await conn.fetchval(
                "SELECT count(*) FROM timers WHERE kind = $1 AND due_at <= $2", DELIVER, now
            )
            after_commit(lambda: QUEUE_DEPTH.set(depth))
            return out.records, handled

        async def record(conn: DbConnection, row: NotificationRow) -> None:
            await store.save(conn, row)
            due = row.due_at if row.status == "waiting" else None
            await schedule(conn, DELIVER, [(row.notification_id, due)])

        async def guarded_attempt(
            conn: DbConnection, out: Emitter, row: NotificationRow, now: datetime, batch: Batch
        ) -> None:
            """`attempt`, in a savepoint: whatever one notification's facts make go wrong fails
            that notification, not the round (which would fail the same way every time)."""
            emitted = len(out.records)
            try:
                async with conn.transaction():
                    await attempt(conn, out, row, now, batch)
            except Exception as exc:
                if unavailable(exc) or transient(exc):
                    raise  # the database's trouble, not the row's: the round is tried again
                del out.records[emitted:]
                log.exception("notification failed", notification_id=row.notification_id)
                row.status, row.updated_at = "failed", now
                row.reason = f"notify: {type(exc).__name__}: {exc}"[:1000]
                out.emit("failed", row, now)

        async def attempt(
            conn: DbConnection, out: Emitter, row: NotificationRow, now: datetime, batch: Batch
        ) -> None:
            def suppress(reason: str) -> None:
                row.status, row.reason, row.updated_at = "suppressed", reason, now
                out.emit("suppressed", row, now)

            trigger = rules.trigger(row.trigger)
            if trigger is None:
                return suppress(f"trigger {row.trigger!r} is no longer in the rules")
            due = first_due(rules, trigger, row.cause_time)
            if now - due > stale_after:
                return suppress(f"stale: due at {due.isoformat()}")
            found = await follow_merges(conn, row.profile_id)
            if found is None:
                if now - row.created_at < profile_wait:
                    row.due_at = now  # looked at again next round
                    return None
                row.context = {}  # nobody to send to: keep none of the event's facts
                return suppress("no such profile (unknown or erased)")
            survivor, snapshot = found
            if survivor != row.profile_id:
                # Decide for the survivor under its own lock (caps, the duplicate check).
                if not await try_lock_keys(conn, [f"notify:{survivor}"]):
                    row.due_at = now  # another instance decides for the survivor: next round
                    return None
                key = rekeyed(row, survivor)
                one_waits = trigger.occurrence in ("pending", "first")
                if await store.live_key_taken(conn, key, row.notification_id) or (
                    one_waits and await store.overlapping(conn, row, survivor)
                ):
                    return suppress(f"duplicate: merged into {survivor}, who has it")
                row.profile_id, row.dedupe_key = survivor, key
                await store.save(conn, row)  # a clash of keys shows here, before any send
            members = await store.loyalty_members(conn, [survivor])
            programs = frozenset({rules.loyalty_program}) if rules.loyalty_program else frozenset()
            customer = Customer.of_snapshot(snapshot, programs if members else frozenset())
            behind = customer.last_seen is None or customer.last_seen < row.cause_time
            # The profile's snapshot after the touchpoint may not have reached the replica yet.
            young = now - row.created_at < profile_wait
            if trigger.when.loyalty is None and behind and young:
                row.due_at = now  # looked at again next round
                return None
            context: dict[str, Any] = {
                "profile": customer.traits,
                "event": row.context,
                "trigger": trigger.name,
            }
            if trigger.category == "task":
                return send_task(out, row, trigger, customer, context, now, batch)
            sent = await store.history(conn, survivor, now - longest_cap)
            for kind, times in batch.history.get(survivor, {}).items():
                sent.setdefault(kind, []).extend(times)
            history = History(sent)
            decision = decide(rules, trigger, customer, history, now, delivers)
            if isinstance(decision, Suppress):
                return suppress(decision.reason)
            if isinstance(decision, Wait):
                row.due_at, row.reason, row.updated_at = decision.until, decision.reason, now
                return None
            address = decision.address
            headers: tuple[tuple[str, str], ...] = ()
            if trigger.category == "marketing" and decision.channel == "email":
                assert address is not None
                token = token_for(
                    Unsubscribe(row.profile_id, address, trigger.purpose, row.notification_id),
                    unsubscribe_secret,
                )
                link = f"{settings.public_url()}/v1/unsubscribe?token={token}"
                context["unsubscribe_url"] = link
                headers = (
                    ("List-Unsubscribe", f"<{link}>"),
                    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                )
            rendered = rendering(out, row, trigger, customer.language(), context, now)
            if rendered is None:
                return None
            if headers:
                rendered = with_unsubscribe(rendered, context["unsubscribe_url"])

            row.channel, row.address, row.language = decision.channel, address, rendered.language
            row.attempts += 1
            if decision.channel == "in_app":  # a row in this database, in this transaction
                subject, text = rendered.subject, rendered.text
                await store.add_to_inbox(conn, row.notification_id, survivor, subject, text, now)
                finish(out, row, "in_app", None, now)
                return None
            channel = decision.channel
            batch.history.setdefault(survivor, {}).setdefault(
                (trigger.category, channel), []
            ).append(now)
            assert address is not None

            async def deliver() -> str | None:
                assert address is not None
                if channel == "sms":
                    assert sms is not None
                    return await sms.send(row.notification_id, address, rendered.text)
                return await email.send(Email(row.notification_id, address, rendered, headers))

            batch.add(Go(row, channel, deliver))
            return None

        def send_task(
            out: Emitter,
            row: NotificationRow,
            trigger: Trigger,
            customer: Customer,
            context: dict[str, Any],
            now: datetime,
            batch: Batch,
        ) -> None:
            """A task for staff: no consent, caps or quiet hours; in the default language."""
            tasks = rules.tasks
            assert tasks is not None  # the rules refuse a task trigger without it
            rendered = rendering(out, row, trigger, None, context, now)
            if rendered is None:
                return
            owner = tasks.owner(customer.traits.get(tasks.owner_trait))
            row.address, row.language = owner, rendered.language
            row.attempts += 1
            if tasks.deliver == "email":

                async def by_email() -> str | None:
                    return await email.send(Email(row.notification_id, owner, rendered))

                row.channel = "email"
                batch.add(Go(row, "email", by_email))
                return
            payload = {
                "notification_id": row.notification_id,
                "trigger": trigger.name,
                "profile_id": row.profile_id,
                "owner": owner,
                "subject": rendered.subject,
                "text": rendered.text,
                "cause_event_id": row.cause_event_id,
                "cause_time": row.cause_time.isoformat(),
                "event": row.context,
            }

            async def by_webhook() -> str | None:
                if webhook is None:
                    raise DeliveryFailed("webhook: CRM_WEBHOOK_URL is not set", permanent=True)
                return await webhook.post(row.notification_id, payload)

            row.channel = "webhook"
            batch.add(Go(row, "webhook", by_webhook))

        def rendering(
            out: Emitter,
            row: NotificationRow,
            trigger: Trigger,
            language: str | None,
            context: dict[str, Any],
            now: datetime,
        ) -> Rendered | None:
            """The message, or None when the template fails on these facts: then the
            notification failed (trying again would fail the same way)."""
            try:
                return render(rules, trigger.template, language, context)
            except Exception as exc:  # a sandbox refusal, a type error on these facts
                reason = f"template {trigger.template}: {type(exc).__name__}: {exc}"
                row.status, row.reason, row.updated_at = "failed", reason[:1000], now
                out.emit("failed", row, now)
                return None

        async def send(go: Go) -> str | DeliveryFailed | None:
            async with concurrency:
                try:
                    provider_id = await go.deliver()
                except DeliveryFailed as failed:
                    return failed
                except Exception as exc:  # a send must never fail the round after others went
                    log.exception("send failed", notification_id=go.row.notification_id)
                    reason = f"{go.channel}: {type(exc).__name__}: {exc}"[:500]
                    return DeliveryFailed(reason, permanent=False)
            if settings.fault_crash_point == "after_send":
                log.warning("fault injection: SIGKILL after a send", id=go.row.notification_id)
                os.kill(os.getpid(), signal.SIGKILL)
            return provider_id

        def finish(
            out: Emitter,
            row: NotificationRow,
            channel: str,
            outcome: str | DeliveryFailed | None,
            now: datetime,
        ) -> None:
            """Record what came of a send: sent (in-app: delivered too), a retry after the
            backoff, or failed."""
            if isinstance(outcome, DeliveryFailed):
                row.reason, row.updated_at = outcome.reason, now
                if outcome.permanent or row.attempts >= rules.retry.attempts:
                    row.status = "failed"
                    out.emit("failed", row, now)
                else:
                    row.due_at = now + timedelta(seconds=rules.retry.delay_s(row.attempts))
                if outcome.bounced and channel == "email":
                    out.records.append(bounce_touchpoint(out.prefix, row, now))
                elif outcome.bounced and channel == "sms":
                    out.records.append(sms_failed_touchpoint(out.prefix, row, now, outcome.code))
                log.warning(
                    "delivery failed",
                    notification_id=row.notification_id,
                    channel=channel,
                    attempt=row.attempts,
                    permanent=outcome.permanent,
                    reason=outcome.reason,
                )
                return
            row.provider_id = outcome
            row.status, row.reason, row.sent_at, row.updated_at = "sent", None, now, now
            out.emit("sent", row, now)
            if channel == "in_app":
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
