"""`python -m crm_ingest`: serve the HTTP front door."""

from crm_ingest.app import build


def main() -> None:
    build().run()


if __name__ == "__main__":
    main()
