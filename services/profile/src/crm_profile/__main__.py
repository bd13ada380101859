"""`python -m crm_profile`: serve the read API and run the consumers."""

from crm_profile.app import build


def main() -> None:
    build().run()


if __name__ == "__main__":
    main()
