"""Structured logging, set up once per process: JSON off a terminal, and never PII.

Personal data must not reach a log line: values under personal keys are dropped, and email
addresses and phone numbers inside any other value are masked.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

PII_KEYS = frozenset(
    {
        "email",
        "phone",
        "name",
        "first_name",
        "last_name",
        "firstname",
        "lastname",
        "full_name",
        "address",
        "identities",
        "traits",
        "identifiers",
        "value",
    }
)
# Also URL-encoded (`%40`), as emails appear in query strings.
_EMAIL = re.compile(r"[\w.+%-]+(@|%40)[\w-]+(\.[\w-]+)+")
# International form only (`+` then digits): dates, ids and addresses must stay readable, and
# identifiers are normalised to this form before anything could log them.
_PHONE = re.compile(r"\+\d[\d ().-]{6,}\d")
REDACTED = "[redacted]"


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _PHONE.sub(REDACTED, _EMAIL.sub(REDACTED, value))
    if isinstance(value, Mapping):
        return {k: REDACTED if str(k).lower() in PII_KEYS else _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_scrub(v) for v in value]
    return value


def redact_pii(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drops personal keys, masks emails and phone numbers elsewhere."""
    for key in list(event_dict):
        if key.lower() in PII_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    """Route structlog and the standard library (uvicorn, aiokafka, faststream) through one
    renderer; the PII filter runs once, in it, after exceptions are formatted."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_pii,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
