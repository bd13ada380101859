"""Write keys: who may send touchpoints, and on which channels.

Keys are random and long, so a SHA-256 of each is what is stored (in the JSON file named by
CRM_WRITE_KEYS_FILE, managed with `crm-ingest keys`); the key itself is shown once, when it is
made. A presented key is hashed and compared with every stored hash in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from crm_shared.contracts import CHANNELS
from crm_shared.contracts.touchpoints import Channel
from crm_shared.errors import summary
from crm_shared.settings import DEV_WRITE_KEY

KeyName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: KeyName
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    channels: Annotated[list[Channel], Field(min_length=1)]
    created_at: AwareDatetime


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(default=1, ge=1, le=1)
    keys: list[KeyEntry] = Field(default_factory=list)


class KeyFileError(ValueError):
    """The key file cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class WriteKey:
    name: str
    sha256: str
    channels: frozenset[str]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    def __init__(self, keys: Iterable[WriteKey]) -> None:
        self.keys = tuple(keys)

    def find(self, presented: str) -> WriteKey | None:
        """The key presented, compared with every stored hash (no early exit on a match)."""
        digest = hash_key(presented).encode()
        found: WriteKey | None = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.sha256.encode()):
                found = key
        return found


def development_keyring() -> KeyRing:
    """`dev-write-key`, allowed every channel: only where no key file is configured and
    CRM_ENV is not production."""
    return KeyRing([WriteKey("development", hash_key(DEV_WRITE_KEY), frozenset(CHANNELS))])


def read_key_file(path: Path) -> KeyFile:
    try:
        return KeyFile.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such file (create it with `crm-ingest keys add`)") from None
    except ValidationError as exc:
        raise KeyFileError(f"{path}: {summary(exc)}") from None


def load_keyring(path: Path) -> KeyRing:
    entries = read_key_file(path).keys
    if not entries:
        raise KeyFileError(f"{path}: holds no keys, so nobody could send")
    return KeyRing(WriteKey(e.name, e.sha256, frozenset(e.channels)) for e in entries)


def add_key(path: Path, name: str, channels: list[str]) -> str:
    """Make a new key for `name`, store its hash, and return the key (shown only now)."""
    document = read_key_file(path) if path.exists() else KeyFile()
    if any(entry.name == name for entry in document.keys):
        raise KeyFileError(f"{path}: a key named {name!r} exists; revoke it first")
    key = f"wk_{secrets.token_urlsafe(32)}"
    try:
        entry = KeyEntry.model_validate(
            {
                "name": name,
                "sha256": hash_key(key),
                "channels": channels,
                "created_at": datetime.now(UTC),
            }
        )
    except ValidationError as exc:
        raise KeyFileError(summary(exc)) from None
    _write(path, KeyFile(version=1, keys=[*document.keys, entry]))
    return key


def revoke_key(path: Path, name: str) -> None:
    document = read_key_file(path)
    kept = [entry for entry in document.keys if entry.name != name]
    if len(kept) == len(document.keys):
        raise KeyFileError(f"{path}: no key named {name!r}")
    _write(path, KeyFile(version=1, keys=kept))


def _write(path: Path, document: KeyFile) -> None:
    """Write a new file and rename it over the old one, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document.model_dump(mode="json"), indent=2) + "\n")
    temporary.chmod(0o600)
    temporary.replace(path)
