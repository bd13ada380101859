"""`crm-admin`: create the registry's topics, apply a service's migrations, generate the docs."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from crm_shared.database import migrate
from crm_shared.installed import installed_services, service
from crm_shared.kafka import create_topics
from crm_shared.logging import configure_logging
from crm_shared.settings import ServiceSettings
from crm_shared.specs import generated_files


def _topics(args: argparse.Namespace) -> int:
    settings = ServiceSettings()
    created = asyncio.run(
        create_topics(
            settings.kafka_bootstrap,
            prefix=settings.topic_prefix,
            partitions=args.partitions or settings.topic_partitions,
            replication_factor=args.replication_factor or settings.topic_replication_factor,
        )
    )
    print(f"topics created: {', '.join(created) if created else 'none (all exist)'}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    descriptor = service(args.service)
    if descriptor.migrations is None:
        print(f"{descriptor.name} is stateless: nothing to migrate")
        return 0
    # The URL alone is needed: building the service's whole settings would also demand its
    # production secrets (API tokens, write keys) just to migrate.
    url = (
        args.database_url
        or os.environ.get("CRM_DATABASE_URL")
        or descriptor.settings.model_fields["database_url"].default
    )
    applied = asyncio.run(migrate(url, descriptor.migrations()))
    print(f"{descriptor.name}: applied {', '.join(applied) if applied else 'nothing (up to date)'}")
    return 0


def _docs(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    classes = [(d.name, d.settings) for d in installed_services()]
    stale: list[str] = []
    for path, text in generated_files(root, classes).items():
        current = path.read_text("utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path.relative_to(root)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, "utf-8")
            print(f"wrote {path.relative_to(root)}")
    if stale:
        print("stale generated docs (run `make docs`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crm-admin", description=__doc__)
    sub = parser.add_subparsers(required=True)

    topics = sub.add_parser("create-topics", help="create the topic registry's topics (idempotent)")
    topics.add_argument("--partitions", type=int, help="default: CRM_TOPIC_PARTITIONS")
    topics.add_argument(
        "--replication-factor", type=int, help="default: CRM_TOPIC_REPLICATION_FACTOR"
    )
    topics.set_defaults(run=_topics)

    mig = sub.add_parser("migrate", help="apply a service's SQL migrations (idempotent)")
    mig.add_argument("service", help="ingest, profile, loyalty or notify")
    mig.add_argument("--database-url", help="default: CRM_DATABASE_URL, else the service's default")
    mig.set_defaults(run=_migrate)

    docs = sub.add_parser("docs", help="write docs/ and README tables generated from the code")
    docs.add_argument("--root", default=".", help="the repository root")
    docs.add_argument("--check", action="store_true", help="fail if anything is stale")
    docs.set_defaults(run=_docs)

    args = parser.parse_args(argv)
    configure_logging(os.environ.get("CRM_LOG_LEVEL", "warning"))
    try:
        code: int = args.run(args)
    except (LookupError, OSError, RuntimeError, ValueError) as exc:
        print(f"crm-admin: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
