"""The benchmarks are not run by the test suite (their figures live in bench/RESULTS.md), but
they must at least start: each is run for its help, which imports everything it uses."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT


@pytest.mark.parametrize(
    "script",
    [
        "bench/run.py",
        "bench/ingest",
        "bench/ingest/load.py",
        "bench/profile",
        "bench/loyalty",
        "bench/notify",
    ],
    ids=lambda s: s,
)
def test_a_benchmark_script_starts(script: str) -> None:
    done = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
