"""``python -m ripplerec.streams --role all``: a worker configured from the environment."""

from __future__ import annotations

import argparse

from ripplerec.config import Settings
from ripplerec.streams.app import ROLES
from ripplerec.streams.worker import run_worker


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ripplerec.streams")
    parser.add_argument("--role", default="all", choices=list(ROLES))
    parser.add_argument("--loglevel", default="warning")
    parser.add_argument("--no-web", action="store_true")
    args = parser.parse_args()
    run_worker(Settings(), args.role, loglevel=args.loglevel, web=not args.no_web)


if __name__ == "__main__":
    main()
