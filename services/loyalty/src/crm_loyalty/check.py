"""`crm-loyalty check`: prove that the stored balances never drifted from the ledger.

For every account: the balance equals the sum of its entries; the points waiting in lots less
the unpaid debts equal it too; and every entry's points are accounted for, a credit's by its lot
and what it paid out, a debit's by what paid it and its debt. Exit 0 when all agree, 1 with the
accounts that do not.
"""

from __future__ import annotations

import argparse
import asyncio

import asyncpg

from crm_loyalty import store
from crm_loyalty.settings import LoyaltySettings


async def check(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            accounts = await conn.fetchval("SELECT count(*) FROM accounts")
            entries = await conn.fetchval("SELECT count(*) FROM ledger")
            wrong = await store.discrepancies(conn)
    finally:
        await conn.close()
    for row in wrong:
        print(
            f"account {row['profile_id']}: balance {row['balance']}, ledger sum "
            f"{row['ledger_sum']}, lots less debts {row['open_sum']}, "
            f"entries not accounted for {row['entries_off']}"
        )
    verdict = f"{len(wrong)} of {accounts} accounts disagree" if wrong else "all agree"
    print(f"checked {accounts} accounts and {entries} ledger entries: {verdict}")
    return 1 if wrong else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crm-loyalty check",
        description="Check that every balance is the sum of its ledger (read-only).",
    )
    parser.add_argument(
        "--database-url", help="loyalty's database (default: CRM_DATABASE_URL or its default)"
    )
    args = parser.parse_args(argv)
    return asyncio.run(check(args.database_url or LoyaltySettings().database_url))
