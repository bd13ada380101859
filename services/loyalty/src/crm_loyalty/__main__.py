"""`crm-loyalty`: run the consumers and the API; `crm-loyalty check`: prove that every balance
is the sum of its ledger (see crm_loyalty.check)."""

import sys

from crm_loyalty.program import ProgramError


def main() -> None:
    if sys.argv[1:2] == ["check"]:
        from crm_loyalty.check import main as check

        raise SystemExit(check(sys.argv[2:]))
    from crm_loyalty.app import build

    try:
        service = build()
    except ProgramError as refused:
        print(f"crm-loyalty: the program file is refused: {refused}", file=sys.stderr)
        raise SystemExit(2) from None
    service.run()


if __name__ == "__main__":
    main()
