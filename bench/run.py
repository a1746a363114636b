"""`python -m bench` / `python bench/run.py`: measure croptune's performance figures side by side.

    python -m bench                      # the default set: every figure at its default sizing
    python -m bench --quick              # every code path at toy sizes (numbers not meaningful)
    python -m bench --only P1,P2         # some figures
    python -m bench --full               # the real demo search end to end, retrains at demo size

Writes bench/results.json (every number, the sizing of each figure, the machine) and prints a
markdown table: id, measure, value, goal, pass/fail. How long each mode takes, what each figure
measures and how it is sized: bench/README.md. Figures:

    P1  wall time per epoch, trial under Tune / bare fit()            goal ≤ 1.03
    P2  input throughput, decode-once + batched aug / seed-style      goal ≥ 10×; data wait < 5 %
    P3  ASHA+TPE vs FIFO random: epochs, best metric over seeds       goal ≤ 0.4×; not lower beyond noise
    P4  demo search epochs / one training; verify Δ macro-F1          goal ≤ 3×; > 2 SE
    P5  peak RSS summed over processes, 4 trials / 1                  goal ≤ 1.5×
    P6  --help; first trial result; demo search end to end            goal ≤ 1 s; ≤ 20 s; ≤ 10 min
    T1  training images/s of the demo model
    T2  search wall time and epochs with 3 / 6 / 12 trials
    D1  `python -m trainable --demo` final val accuracy               goal 50-95 %
    G1  (CUDA) resnet50 224 px AMP: trial / bare timm loop            goal ≥ 0.9×; G2 data wait < 5 %

Benchmarks, not tests: nothing here fails on a slow machine; a missed goal is a FAIL row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fig_cli, fig_cuda, fig_demo, fig_input, fig_loop, fig_search  # noqa: E402
from bench.processes import machine_info, say, stop_ray  # noqa: E402
from bench.profiles import REPO, Context  # noqa: E402
from bench.rows import FigureResult, fmt_s  # noqa: E402

# Run order: subprocess figures first (no Ray session of our own yet), then the input
# pipeline (a DataLoader forks workers: before Ray's threads exist), then the in-process Ray work.
FIGURES = {
    "P6": fig_cli.run_p6,
    "P5": fig_cli.run_p5,
    "P2": fig_input.run,
    "P1": fig_loop.run,
    "T1": fig_loop.run_throughput,
    "P3": fig_search.run_p3,
    "T2": fig_search.run_growth,
    "P4": fig_search.run_p4,
    "D1": fig_demo.run,
    "G1": fig_cuda.run,
}
ALIASES = {"G2": "G1"}
TABLE_ORDER = ["D1", "P1", "P2", "P3", "P4", "P5", "P6", "T1", "T2", "G1", "G2"]
DEFAULT_OUT = REPO / "bench" / "results.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--only", metavar="IDS", help="comma-separated figure ids, e.g. P1,P2 (default: all; "
                        "G1/G2 run only where CUDA is available)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="toy sizes: every code path, numbers not meaningful")
    size.add_argument("--full", action="store_true",
                      help="the real demo search end to end and retrains at demo size (longer than the default)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default bench/results.json)")
    return parser


def select(only: str | None) -> list[str]:
    if not only:
        return [f for f in FIGURES if f != "G1" or fig_cuda.available()]
    wanted = []
    for item in only.split(","):
        key = ALIASES.get(item.strip().upper(), item.strip().upper())
        if key not in FIGURES:
            raise SystemExit(f"--only: unknown figure {item!r}; choose from {', '.join(TABLE_ORDER)}")
        if key not in wanted:
            wanted.append(key)
    return [f for f in FIGURES if f in wanted]


def run_figures(ctx: Context, ids: list[str]) -> list[FigureResult]:
    results = []
    for figure_id in ids:
        started = time.perf_counter()
        say(f"{figure_id}: start")
        try:
            result = FIGURES[figure_id](ctx)
        except Exception as exc:  # one broken figure must not lose the others
            result = FigureResult(figure_id, "error")
            result.error = f"{type(exc).__name__}: {exc}"
            result.add("error", result.error.splitlines()[0][:160], passed=None)
            say(f"{figure_id}: failed: {result.error}")
            traceback.print_exc(file=sys.stderr)
        result.elapsed_s = time.perf_counter() - started
        say(f"{figure_id}: done in {fmt_s(result.elapsed_s)}")
        results.append(result)
    p6 = next((r for r in results if r.id == "P6"), None)
    if p6 is not None and p6.error is None:
        fig_cli.project_e2e(ctx, p6)
    return results


def table(results: list[FigureResult]) -> str:
    rows = [row for result in results for row in result.rows]
    rows.sort(key=lambda r: TABLE_ORDER.index(r.id) if r.id in TABLE_ORDER else len(TABLE_ORDER))
    lines = ["| id | measure | value | goal | pass/fail |", "|---|---|---|---|---|"]
    for row in rows:
        value = row.value + (f" ({row.note})" if row.note else "")
        lines.append(f"| {row.id} | {row.measure} | {value} | {row.goal} | {row.verdict} |")
    return "\n".join(lines)


def to_json(ctx: Context, results: list[FigureResult], started: float, argv: list[str], info: dict) -> dict:
    def clean(value):
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, float) and value != value:
            return None
        if isinstance(value, str | int | float | bool) or value is None:
            return value
        return repr(value)

    return clean({
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "mode": ctx.mode, "argv": argv,
        "command": "python -m bench " + " ".join(argv), "total_s": round(time.perf_counter() - started, 1),
        "machine": info, "machine_after": {"loadavg": machine_info().get("loadavg")},
        "figures": {r.id: {"title": r.title, "rows": [vars(row) | {"verdict": row.verdict} for row in r.rows],
                           "sizing": r.sizing, "raw": r.raw, "elapsed_s": round(r.elapsed_s, 1), "error": r.error}
                    for r in results},
    })


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    mode = "quick" if args.quick else "full" if args.full else "default"
    ids = select(args.only)
    ctx = Context(mode=mode, run_id=time.strftime("%Y%m%d-%H%M%S"))
    info = machine_info()
    say(f"mode {mode}; figures {', '.join(ids)}; machine {info}; work dir {ctx.work}")
    started = time.perf_counter()
    try:
        results = run_figures(ctx, ids)
    finally:
        stop_ray()
    payload = to_json(ctx, results, started, argv, info)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(table(results))
    print(f"\n{mode} mode, {fmt_s(payload['total_s'])}; load average before {info.get('loadavg')}, after "
          f"{payload['machine_after']['loadavg']} ({info.get('cpus')} CPUs). Results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
