"""`crm-ingest`: serve the HTTP front door; `crm-ingest keys ...`: manage write keys."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from crm_ingest.app import build
from crm_ingest.keys import KeyFileError, add_key, read_key_file, revoke_key
from crm_shared.contracts import CHANNELS


def _keys(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crm-ingest keys", description="Manage write keys.")
    parser.add_argument(
        "--file",
        default=os.environ.get("CRM_WRITE_KEYS_FILE"),
        help="the key file (default: CRM_WRITE_KEYS_FILE)",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="make a key; it is printed once, only its hash is stored")
    add.add_argument("name", help="who sends with it, e.g. shop-frontend")
    add.add_argument(
        "--channels",
        default=",".join(CHANNELS),
        help=f"comma separated, from: {', '.join(CHANNELS)} (default: all)",
    )
    sub.add_parser("list", help="names, channels and creation times (never keys)")
    revoke = sub.add_parser("revoke", help="remove a key; restart ingest to apply")
    revoke.add_argument("name")
    args = parser.parse_args(argv)
    if not args.file:
        parser.error("no key file: pass --file or set CRM_WRITE_KEYS_FILE")
    path = Path(args.file)
    try:
        if args.action == "add":
            channels = [c.strip() for c in args.channels.split(",") if c.strip()]
            key = add_key(path, args.name, channels)
            print(f"write key for {args.name} (shown once; only its hash is stored):\n{key}")
        elif args.action == "list":
            for entry in read_key_file(path).keys:
                print(f"{entry.name}\t{','.join(entry.channels)}\t{entry.created_at.isoformat()}")
        else:
            revoke_key(path, args.name)
            print(f"revoked {args.name}; restart ingest to apply")
    except KeyFileError as exc:
        print(f"crm-ingest keys: {exc}", file=sys.stderr)
        return 2
    return 0


def main() -> None:
    if sys.argv[1:2] == ["keys"]:
        raise SystemExit(_keys(sys.argv[2:]))
    build().run()


if __name__ == "__main__":
    main()
