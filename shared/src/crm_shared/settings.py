"""Settings every service shares (environment variables with the `CRM_` prefix)."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from crm_shared.contracts.touchpoints import IDENTIFIER_KIND_PATTERN, IDENTIFIER_STRENGTH

# Development defaults: used by `make up` and the docs, refused when CRM_ENV=production.
DEV_WRITE_KEY = "dev-write-key"
DEV_ADMIN_TOKEN = "dev-admin-token"  # noqa: S105 (documented development default)


class ServiceSettings(BaseSettings):
    """What every service reads; each service extends it with its own fields."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    env: Literal["development", "production"] = Field(
        default="development", description="`production` refuses the development defaults"
    )
    service_name: ClassVar[str] = "crm"
    http_host: str = Field(default="127.0.0.1", description="address the HTTP server binds")
    http_port: int = Field(default=8000, ge=1, le=65535, description="HTTP port")
    kafka_bootstrap: str = Field(
        default="127.0.0.1:9092", description="Kafka bootstrap servers, comma separated"
    )
    kafka_enable_idempotence: bool = Field(
        default=True,
        description="idempotent producer; on for Apache Kafka, off for the local broker "
        "(Tansu answers InitProducerId with an error)",
    )
    kafka_linger_ms: int = Field(
        default=5,
        ge=0,
        description="how long the producer waits to batch records of the outbox relay and the "
        "dead letters; ingest hands its records over in ready batches, which do not wait",
    )
    kafka_request_timeout_ms: int = Field(
        default=30_000, ge=1000, description="producer request timeout"
    )
    topic_prefix: str = Field(
        default="", description="prefix of every topic name (tests and shared clusters)"
    )
    topic_partitions: int = Field(default=12, ge=1, description="partitions of created topics")
    topic_replication_factor: int = Field(
        default=1, ge=1, description="replication factor of created topics (3 in production)"
    )
    identifier_kinds: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="identifier kinds besides customer_id, email, phone, anonymous_id and "
        "device_id that touchpoints may carry in `identities.other` (e.g. loyalty_card), comma "
        "separated; the same list for every service",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="lowest level logged"
    )
    log_json: bool | None = Field(
        default=None, description="JSON logs; by default JSON unless stderr is a terminal"
    )
    fault_crash_point: Literal["after_db_commit", "after_outbox_publish", "after_send"] | None = (
        Field(
            default=None,
            description="test hook: SIGKILL this process at that point of the next record, or "
            "(notify, after_send) once a message went out and before that is recorded "
            "(refused in production)",
        )
    )

    @model_validator(mode="after")
    def _production_refuses_test_hooks(self) -> ServiceSettings:
        if self.env == "production" and self.fault_crash_point is not None:
            raise ValueError("CRM_FAULT_CRASH_POINT is a test hook and is refused in production")
        return self

    @field_validator("identifier_kinds", mode="before")
    @classmethod
    def _split_kinds(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("identifier_kinds")
    @classmethod
    def _valid_kinds(cls, kinds: list[str]) -> list[str]:
        for kind in kinds:
            if kind in IDENTIFIER_STRENGTH:
                raise ValueError(f"{kind!r} is built in; list only the kinds to add")
            if not re.fullmatch(IDENTIFIER_KIND_PATTERN, kind):
                raise ValueError(
                    f"{kind!r} is not a kind name (lower-case letters, digits and _, at most 32)"
                )
        if len(kinds) != len(set(kinds)):
            raise ValueError("a kind is listed twice")
        return kinds


class StatefulSettings(ServiceSettings):
    """Services with their own database, consumers and outbox."""

    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5433/postgres",
        description="PostgreSQL URL of this service's own database",
    )
    database_pool_size: int = Field(default=10, ge=1, description="connections in the pool")
    migrate_on_start: bool = Field(
        default=True, description="apply this service's SQL migrations when it starts"
    )
    consumer_max_attempts: int = Field(
        default=3, ge=1, description="tries of a failing record before it is dead-lettered"
    )
    consumer_retry_backoff_s: float = Field(
        default=0.2, gt=0, description="first pause between tries; doubles each time"
    )
    consumer_batch_size: int = Field(
        default=500,
        ge=1,
        description="most records a consumer applies in one database transaction",
    )
    consumer_batch_wait_ms: int = Field(
        default=50,
        ge=1,
        description="how long a consumer waits for records when none are buffered",
    )
    consumer_fetch_max_wait_ms: int = Field(
        default=100,
        ge=1,
        le=60_000,
        description=(
            "longest a fetch waits at the broker for new records; Apache Kafka answers as soon "
            "as one arrives, other Kafka-protocol brokers may hold the fetch this long"
        ),
    )
    outbox_poll_interval_s: float = Field(
        default=0.5, gt=0, description="how often the relay looks for unpublished outbox rows"
    )
    outbox_batch_size: int = Field(
        default=2000, ge=1, description="outbox rows published per round"
    )
    timer_poll_interval_s: float = Field(
        default=1.0, gt=0, description="how often an instance looks for due timers"
    )
    timer_batch_size: int = Field(default=500, ge=1, description="due timers fired per round")


class ApiSettings(StatefulSettings):
    """Services with an authenticated read API."""

    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=lambda: [SecretStr(DEV_ADMIN_TOKEN)],
        description="bearer tokens of the admin role (read and erase), comma separated",
    )
    agent_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="bearer tokens of the agent role (read only), comma separated",
    )

    @model_validator(mode="before")
    @classmethod
    def _split_tokens(cls, values: dict[str, object]) -> dict[str, object]:
        for name in ("api_tokens", "agent_tokens"):
            raw = values.get(name)
            if isinstance(raw, str):
                values[name] = [t.strip() for t in raw.split(",") if t.strip()]
        return values

    @model_validator(mode="after")
    def _production_refuses_dev_token(self) -> ApiSettings:
        if self.env == "production" and any(
            t.get_secret_value() == DEV_ADMIN_TOKEN for t in self.api_tokens
        ):
            raise ValueError("CRM_API_TOKENS holds the development token; set real tokens")
        return self
