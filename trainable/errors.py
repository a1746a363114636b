"""Errors the user can fix, and the one way the command-line tools report them."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input: reported as one line naming the problem and the fix, exit code 2."""


def yaml_error_line(exc: Exception) -> int | None:
    """The 1-based line a PyYAML parse error points at, or None when it carries no position."""
    mark = getattr(exc, "problem_mark", None)
    return None if mark is None else mark.line + 1


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite: the trial is marked diverged."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a CLI entry point; a UserError becomes `error: <message>` on stderr and exit code 2,
    a diverged training run `error: diverged: <message>` and exit code 1 (a run that failed, not bad input)."""
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DivergedError as exc:
        print(f"error: diverged: {exc}", file=sys.stderr)
        return 1
