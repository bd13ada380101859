"""`crm-profile`: serve the read API and run the consumers; `crm-profile rebuild`: rebuild the
database from the touchpoints topic (see crm_profile.rebuild)."""

import sys

from crm_profile.app import build


def main() -> None:
    if sys.argv[1:2] == ["rebuild"]:
        from crm_profile.rebuild import main as rebuild

        raise SystemExit(rebuild(sys.argv[2:]))
    build().run()


if __name__ == "__main__":
    main()
