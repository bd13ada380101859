"""`python -m crm_notify`: run the consumers and the operational HTTP endpoints."""

from crm_notify.app import build


def main() -> None:
    build().run()


if __name__ == "__main__":
    main()
