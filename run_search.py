#!/usr/bin/env python
"""croptune's search command (thin wrapper; the work is in tuner/).

    python run_search.py --space stage_epochs [--demo] [TrainConfig flags] [search flags]
    python run_search.py --resume NAME
    python run_search.py ui | export | retrain | verify ...

Parsing imports neither Ray nor torch, so `--help` is instant.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from trainable.errors import UserError, run_cli

# subcommand -> (module, function(argv) -> exit code), filled by the tracking/export work
SUBCOMMANDS = {
    "ui": ("tuner.tracking", "ui_main"),
    "export": ("tuner.export", "main"),
    "retrain": ("tuner.retrain", "main"),
    "verify": ("tuner.verify", "main"),
}


def _subcommand(name: str):
    module_name, function = SUBCOMMANDS[name]
    if importlib.util.find_spec(module_name) is not None:
        module = importlib.import_module(module_name)
        if hasattr(module, function):
            return getattr(module, function)
    raise UserError(f"`run_search.py {name}` is not available in this installation ({module_name}.{function} missing)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommand(argv[0])(argv[1:])
    from tuner.search import main as search_main

    return search_main(argv)


if __name__ == "__main__":
    try:
        sys.exit(run_cli(main))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
