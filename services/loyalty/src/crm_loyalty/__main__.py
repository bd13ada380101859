"""`python -m crm_loyalty`: run the consumers and the operational HTTP endpoints."""

from crm_loyalty.app import build


def main() -> None:
    build().run()


if __name__ == "__main__":
    main()
