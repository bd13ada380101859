"""`scripts/localinfra.py`: reuses what runs, and explains a missing prerequisite in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, Endpoints


def localinfra(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "localinfra.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_second_up_reuses_the_running_database_and_broker(endpoints: Endpoints) -> None:
    if endpoints.origin != "local":
        pytest.skip(f"endpoints come from {endpoints.origin}: nothing local to reuse")
    env = {
        k: v for k, v in os.environ.items() if k not in ("CRM_KAFKA_BOOTSTRAP", "CRM_DATABASE_URL")
    }
    again = localinfra("up", env=env)
    assert again.returncode == 0, again.stderr
    pg_port = os.environ.get("CRM_PG_PORT", "5433")
    kafka_port = os.environ.get("CRM_KAFKA_PORT", "9092")
    assert f"PostgreSQL already running on 127.0.0.1:{pg_port}" in again.stdout
    assert f"broker already running on 127.0.0.1:{kafka_port}" in again.stdout
    assert "topics created: none (all exist)" in again.stdout
    status = localinfra("status", env=env)
    assert "running" in status.stdout
    assert "stopped" not in status.stdout


def test_a_taken_broker_port_is_explained_in_one_line(endpoints: Endpoints, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "CRM_KAFKA_BOOTSTRAP"}
        env.update(
            CRM_STATE_DIR=str(tmp_path),
            CRM_KAFKA_PORT=str(port),
            CRM_DATABASE_URL=endpoints.database_server,
        )
        refused = localinfra("up", env=env)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"infra: port {port} is taken by another program; set CRM_KAFKA_PORT or "
        "CRM_KAFKA_BOOTSTRAP to use a running broker"
    )
    assert "Traceback" not in refused.stdout + refused.stderr


def test_env_before_up_says_what_to_do(tmp_path: Path) -> None:
    answer = localinfra("env", env={**os.environ, "CRM_STATE_DIR": str(tmp_path)})
    assert answer.returncode == 1
    assert answer.stderr.strip().endswith("not found; run `make infra-up` first")
