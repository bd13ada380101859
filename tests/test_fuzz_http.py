"""Schema-driven fuzzing of the HTTP APIs: schemathesis generates requests from our own
OpenAPI documents (valid and invalid bodies, headers, paths) against the running service;
whatever it sends, no answer may be a server error."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Databases
from tests.support import Endpoints, ServiceProcess, free_port, service_env

CASES = [
    ("crm_ingest", "Authorization: Bearer dev-write-key"),
    ("crm_profile", "Authorization: Bearer dev-admin-token"),
    ("crm_loyalty", "Authorization: Bearer dev-admin-token"),
]


def fuzz(url: str, header: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "60",
            "--seed",
            "20261124",
            "--request-timeout",
            "10",
            "--header",
            header,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=workdir,
    )


@pytest.mark.parametrize(("module", "header"), CASES, ids=[m for m, _ in CASES])
async def test_no_request_gets_a_server_error(
    module: str,
    header: str,
    endpoints: Endpoints,
    topic_prefix: str,
    databases: Databases,
    tmp_path: Path,
) -> None:
    database = None if module == "crm_ingest" else await databases.create("fuzz")
    env = {
        **service_env(endpoints, topic_prefix, database),
        # Thousands of requests: the rate limit is not what is tested here.
        "CRM_RATE_LIMIT_EVENTS_PER_S": "1000000",
        "CRM_RATE_LIMIT_BURST": "1000000",
    }
    service = ServiceProcess(module, env, free_port(), tmp_path / "service.log")
    service.start()
    try:
        await service.wait_ready()
        result = await asyncio.to_thread(fuzz, service.url, header, tmp_path)
    finally:
        service.stop()
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, f"schemathesis found failures:\n{report}\n{service.tail(60)}"
    ran = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert ran is not None, report
    assert int(ran[1]) >= 100, f"too few requests to mean anything:\n{report}"
    assert ran[1] == ran[2], report
