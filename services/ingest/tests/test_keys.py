"""Write keys are stored hashed, managed from the command line, and refused precisely."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crm_ingest.keys import KeyFileError, hash_key, load_keyring
from crm_ingest.ratelimit import RateLimiter


def keys(*args: str, file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crm_ingest", "keys", "--file", str(file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_keys_are_made_listed_and_revoked_and_only_their_hash_is_stored(tmp_path: Path) -> None:
    file = tmp_path / "keys.json"
    made = keys("add", "shop-frontend", "--channels", "web,email", file=file)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("wk_")
    assert len(key) > 40
    stored = file.read_text()
    assert key not in stored
    assert hash_key(key) in stored
    assert file.stat().st_mode & 0o777 == 0o600

    keyring = load_keyring(file)
    found = keyring.find(key)
    assert found is not None
    assert found.name == "shop-frontend"
    assert found.channels == {"web", "email"}
    assert keyring.find(key + "x") is None

    assert keys("add", "shop-frontend", file=file).returncode == 2
    listed = keys("list", file=file).stdout
    assert listed.startswith("shop-frontend\tweb,email\t")
    assert key not in listed
    bad = keys("add", "call-centre", "--channels", "fax", file=file)
    assert bad.returncode == 2
    assert "channels" in bad.stderr
    assert keys("revoke", "shop-frontend", file=file).returncode == 0
    with pytest.raises(KeyFileError, match="holds no keys"):
        load_keyring(file)


def test_an_unusable_key_file_is_refused_naming_the_file_and_the_field(tmp_path: Path) -> None:
    file = tmp_path / "keys.json"
    with pytest.raises(KeyFileError, match="no such file"):
        load_keyring(file)
    file.write_text(json.dumps({"keys": [{"name": "Shop!", "sha256": "x", "channels": []}]}))
    with pytest.raises(KeyFileError) as raised:
        load_keyring(file)
    message = str(raised.value)
    assert message.startswith(str(file))
    assert "keys.0.name" in message
    assert "keys.0.sha256" in message
    assert "keys.0.channels" in message


def test_the_rate_limit_refills_steadily_and_says_how_long_to_wait() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=10, burst=20, clock=lambda: now[0])
    assert limiter.take("shop", 20) == 0
    assert limiter.take("shop", 5) == pytest.approx(0.5)
    assert limiter.take("call-centre", 20) == 0, "each key has its own bucket"
    now[0] = 0.5
    assert limiter.take("shop", 5) == 0
    assert limiter.take("shop", 1) == pytest.approx(0.1)
    assert limiter.take("shop", 21) == float("inf")
    assert limiter.peek("shop", 1) == pytest.approx(0.1)
    now[0] = 0.7
    assert limiter.peek("shop", 1) == 0, "a peek takes nothing"
    assert limiter.take("shop", 1) == 0
