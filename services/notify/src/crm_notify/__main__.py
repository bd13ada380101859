"""`crm-notify`: run the consumers, the delivery timer and the API."""

import sys

from crm_notify.rules import RulesError


def main() -> None:
    from crm_notify.app import build

    try:
        service = build()
    except RulesError as refused:
        print(f"crm-notify: the rules file is refused: {refused}", file=sys.stderr)
        raise SystemExit(2) from None
    service.run()


if __name__ == "__main__":
    main()
