"""Run the four services as local processes: `up` starts them in the background and waits until
each answers /readyz, `down` stops them (SIGTERM, so they shut down gracefully).

    python scripts/localplatform.py up | down | status

Endpoints come from CRM_KAFKA_BOOTSTRAP / CRM_DATABASE_URL, else from `.state/infra.env`
(written by `scripts/localinfra.py up`). Logs go to `.state/logs/<service>.log`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from localinfra import STATE, database_url

SERVICES = {  # name: (module, default port, database or None)
    "ingest": ("crm_ingest", 8000, None),
    "profile": ("crm_profile", 8001, "crm_profile"),
    "loyalty": ("crm_loyalty", 8002, "crm_loyalty"),
    "notify": ("crm_notify", 8003, "crm_notify"),
}
READY_TIMEOUT_S = 90.0
MAIL_PORT = 1025
"""A local mail catcher (aiosmtpd, printing every message to .state/logs/mail.log): notify's
default SMTP server, as mailpit is in docker-compose.yml."""


def _infra_env() -> dict[str, str]:
    env: dict[str, str] = {}
    infra = STATE / "infra.env"
    if infra.exists():
        for line in infra.read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
    env.update(
        {k: v for k, v in os.environ.items() if k in ("CRM_KAFKA_BOOTSTRAP", "CRM_DATABASE_URL")}
    )
    if "CRM_KAFKA_BOOTSTRAP" not in env or "CRM_DATABASE_URL" not in env:
        raise SystemExit(
            "platform: no infrastructure: run `make infra-up` or set "
            "CRM_KAFKA_BOOTSTRAP and CRM_DATABASE_URL"
        )
    return env


def _port(name: str) -> int:
    return int(os.environ.get(f"CRM_{name.upper()}_PORT", SERVICES[name][1]))


def _pid(name: str) -> int | None:
    path = STATE / "run" / f"{name}.pid"
    if not path.exists():
        return None
    pid = int(path.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        path.unlink()
        return None
    return pid


def _ready(port: int) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return answer.status == 200, answer.read().decode()
    except urllib.error.HTTPError as error:
        return False, error.read().decode()
    except OSError as error:
        return False, str(error)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _start_mail_catcher() -> None:
    if _pid("mail") is not None or _listening(MAIL_PORT):
        return
    with open(STATE / "logs" / "mail.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{MAIL_PORT}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (STATE / "run" / "mail.pid").write_text(str(process.pid))
    deadline = time.monotonic() + 15
    while not _listening(MAIL_PORT) and time.monotonic() < deadline:
        time.sleep(0.1)


def up() -> int:
    infra = _infra_env()
    (STATE / "run").mkdir(parents=True, exist_ok=True)
    (STATE / "logs").mkdir(parents=True, exist_ok=True)
    _start_mail_catcher()
    for name, (module, _, database) in SERVICES.items():
        if _pid(name) is not None:
            print(f"platform: {name} already running")
            continue
        env = dict(os.environ, **infra, CRM_HTTP_PORT=str(_port(name)), CRM_LOG_JSON="true")
        if database is not None:
            env["CRM_DATABASE_URL"] = database_url(infra["CRM_DATABASE_URL"], database)
        with open(STATE / "logs" / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (STATE / "run" / f"{name}.pid").write_text(str(process.pid))
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = set(SERVICES)
    while waiting and time.monotonic() < deadline:
        for name in sorted(waiting):
            if _pid(name) is None:
                print(
                    f"platform: {name} exited; see {STATE / 'logs' / (name + '.log')}",
                    file=sys.stderr,
                )
                return 1
            if _ready(_port(name))[0]:
                waiting.discard(name)
        time.sleep(0.3)
    if waiting:
        for name in sorted(waiting):
            print(
                f"platform: {name} not ready after {READY_TIMEOUT_S:.0f}s: "
                f"{_ready(_port(name))[1]}",
                file=sys.stderr,
            )
        return 1
    print("platform: all services ready")
    for name in SERVICES:
        print(f"  {name:8} http://127.0.0.1:{_port(name)}  (docs: /docs, metrics: /metrics)")
    mail_log = STATE / "logs" / "mail.log"
    print(f"  mail     smtp://127.0.0.1:{MAIL_PORT}  (what notify sends: {mail_log})")
    return 0


def down() -> int:
    stopping = {name: pid for name in [*SERVICES, "mail"] if (pid := _pid(name)) is not None}
    for pid in stopping.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while stopping and time.monotonic() < deadline:
        stopping = {n: p for n, p in stopping.items() if _pid(n) is not None}
        time.sleep(0.2)
    for name, pid in stopping.items():
        os.kill(pid, signal.SIGKILL)
        (STATE / "run" / f"{name}.pid").unlink(missing_ok=True)
    print("platform: services stopped")
    return 0


def status() -> int:
    for name in SERVICES:
        ready, detail = _ready(_port(name))
        state = "ready" if ready else ("running, not ready" if _pid(name) else "stopped")
        checks = json.loads(detail).get("checks", {}) if detail.startswith("{") else {}
        print(f"{name:8} {state:20} {checks}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    return {"up": up, "down": down, "status": status}[parser.parse_args().action]()


if __name__ == "__main__":
    raise SystemExit(main())
