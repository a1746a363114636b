#!/usr/bin/env python
"""croptune's search command (thin wrapper; the work is in tuner/).

    python run_search.py --space stage_epochs [--demo] [TrainConfig flags] [search flags]
    python run_search.py --resume NAME
    python run_search.py ui | export | retrain | verify ...

Parsing imports neither Ray nor torch, so `--help` is instant.
"""

from __future__ import annotations

import sys

from trainable.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv else None
    # each subcommand's module is imported only when it runs: `--help` stays instant
    if command == "ui":
        from tuner.tracking.ui import main as run
    elif command == "export":
        from tuner.export import main as run
    elif command == "retrain":
        from tuner.retrain import main as run
    elif command == "verify":
        from tuner.verify import main as run
    else:
        from tuner.search import main as search

        return search(argv)
    return run(argv[1:])


if __name__ == "__main__":
    try:
        sys.exit(run_cli(main))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
