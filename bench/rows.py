"""The bench's results and the statistics its rows are built from.

A figure returns one FigureResult: its table rows (Row: measure, value, goal, verdict), the raw
numbers and the sizing it ran at, which bench/run.py prints and writes to results.json. The
statistics skip missing and non-finite values, so a figure with a failed epoch or seed still
reports the rest; fmt/fmt_s print n/a for them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass
class Row:
    """One line of the results table."""
    id: str
    measure: str
    value: str
    goal: str = ""
    passed: bool | None = None        # None: informative, or not measurable in this mode
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "FAIL", None: "-"}[self.passed]


@dataclass
class FigureResult:
    """One figure's outcome: its rows, every number behind them, and what it ran."""
    id: str
    title: str
    rows: list[Row] = field(default_factory=list)
    raw: dict = field(default_factory=dict)       # every number measured, for results.json
    sizing: dict = field(default_factory=dict)    # what was run (data, epochs, trials, seeds)
    elapsed_s: float = 0.0
    error: str | None = None

    def add(self, *args, **kwargs) -> Row:
        row = Row(self.id, *args, **kwargs)
        self.rows.append(row)
        return row


def median(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else float("nan")


def mean_std(values) -> tuple[float, float]:
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"


def fmt_s(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"
