"""P1: wall time per epoch of a trial under Tune / the bare fit() loop; T1: training images/s.

Same config (the demo recipe on the `loop` profile's data), one run, in the order bare - Tune -
bare (A-B-A, so a drift in the machine's load hits both sides):

- bare: `for result in fit(cfg, data)` in this process; an epoch's wall time is the time
  between two results;
- Tune: the same config as a one-trial search through `tuner.search.run_search` (FIFO,
  --cpus-per-trial = all CPUs, as the bare side); an epoch's wall time is Tune's
  `time_this_iter_s` (training, validation, checkpoint and report).

Epoch 1 is left out on both sides (model build, a worker's imports). The ratio is the median over
epochs 2.. of tune[e] / mean(bare_A[e], bare_B[e]); the Tune overhead outside fit() is
time_this_iter_s minus fit()'s own epoch_time_s.
"""

from __future__ import annotations

import os
import time

from bench.datasets import bench_dataset, config_flags, train_config
from bench.processes import cpu_seconds_by_name, ensure_ray, run_search_inprocess, say
from bench.profiles import Context
from bench.rows import FigureResult, fmt, median


def loop_setup(ctx: Context):
    """(cfg, data) of the loop figures, loaded once per run."""
    def load():
        from trainable.data.dataset import load_data

        prof = ctx.profile["loop"]
        paths = bench_dataset(prof["data"])
        cfg = train_config(paths, prof["size"], prof["epochs"])
        return cfg, load_data(cfg, progress=False)

    return ctx.once("loop_setup", load)


def bare_fit(cfg, data) -> dict:
    from trainable.train.loop import fit

    walls, metrics = [], []
    last = time.perf_counter()
    for result in fit(cfg, data):
        now = time.perf_counter()
        walls.append(now - last)
        last = now
        metrics.append(dict(result.metrics))
    return {"wall_s": walls, "metrics": metrics}


def bare_runs(ctx: Context) -> list[dict]:
    """The bare fit() runs of this bench run (one, when P1 did not run first)."""
    if "bare_runs" not in ctx.shared:
        cfg, data = loop_setup(ctx)
        ensure_ray(ctx.log("ray"))  # up before the first bare run: both sides share the same background
        say(f"loop: bare fit() {cfg.epochs} epochs ({len(data.train)} train images, {cfg.image_size} px)")
        ctx.shared["bare_runs"] = [bare_fit(cfg, data)]
    return ctx.shared["bare_runs"]


def tune_run(ctx: Context) -> dict:
    prof = ctx.profile["loop"]
    cfg, _ = loop_setup(ctx)
    cpus = os.cpu_count() or 1
    name = f"p1-tune-{ctx.run_id}"
    flags = config_flags(bench_dataset(prof["data"]), prof["size"], prof["epochs"]) + [
        "--space", "stage_epochs", "--num-samples", "1", "--grace-period", str(cfg.epochs),
        "--cpus-per-trial", str(cpus), "--max-concurrent", "1",
        "--storage-path", str(ctx.storage), "--name", name]
    ensure_ray(ctx.log("ray"))
    say(f"P1: the same config as one Tune trial ({cpus} CPUs)")
    before, started = _cpu_snapshot(), time.perf_counter()
    summary = run_search_inprocess(flags, ctx.log(name))
    wall, after = time.perf_counter() - started, _cpu_snapshot()
    (rows,) = summary["trial_results"].values()
    overrides = rows[0].get("config", {}) if rows else {}
    differs = {k: v for k, v in overrides.items() if getattr(cfg, k, v) != v}
    # CPU used beside the trial while it ran: this process (Tune's driver loop) and Ray's own
    # processes (names present before and after; the trial's worker is usually gone by then).
    beside = {k: round(after[k] - before[k], 2) for k in after if k in before and after[k] > before[k]}
    return {"rows": rows, "summary_wall_s": summary["bench_wall_s"], "config_differs": differs,
            "cpu_s_beside_trial": beside, "tune_wall_s": wall}


def _cpu_snapshot() -> dict[str, float]:
    return cpu_seconds_by_name(os.getpid()) if os.path.isdir("/proc") else {}


def run(ctx: Context) -> FigureResult:
    prof = ctx.profile["loop"]
    fig = FigureResult("P1", "Tune overhead per epoch")
    cfg, data = loop_setup(ctx)
    fig.sizing = {"train_images": len(data.train), "val_images": len(data.val), "image_size": cfg.image_size,
                  "progressive_image_size": cfg.progressive_image_size, "epochs": cfg.epochs,
                  "batch_size": cfg.batch_size, "backbone": cfg.backbone, "order": "bare-Tune-bare" if prof["aba"]
                  else "bare-Tune"}
    runs = bare_runs(ctx)
    tune = tune_run(ctx)
    if prof["aba"]:
        say(f"P1: bare fit() again ({cfg.epochs} epochs)")
        runs.append(bare_fit(cfg, data))
    epochs = range(1, cfg.epochs)  # 0-based index; epoch 1 (index 0) is left out
    tune_wall = [row["time_this_iter_s"] for row in tune["rows"]]
    tune_fit = [row["epoch_time_s"] for row in tune["rows"]]
    bare_wall = [sum(run["wall_s"][e] for run in runs) / len(runs) for e in range(cfg.epochs)]
    ratios = [tune_wall[e] / bare_wall[e] for e in epochs if e < len(tune_wall)]
    ratio = median(ratios)
    overhead = median([tune_wall[e] - tune_fit[e] for e in epochs if e < len(tune_wall)])
    fig.raw = {"bare_wall_s": [run["wall_s"] for run in runs], "tune_time_this_iter_s": tune_wall,
               "tune_fit_epoch_time_s": tune_fit, "per_epoch_ratio": ratios,
               "ratio_of_medians": median([tune_wall[e] for e in epochs]) / median([bare_wall[e] for e in epochs]),
               "tune_overhead_outside_fit_s": overhead, "config_differs_from_bare": tune["config_differs"],
               "cpu_s_beside_trial": tune["cpu_s_beside_trial"], "tune_wall_s": tune["tune_wall_s"],
               "bare_metrics": [run["metrics"] for run in runs], "tune_results": tune["rows"]}
    fig.add(f"wall per epoch, trial under Tune / bare fit() (median of epochs 2-{cfg.epochs})",
            f"{ratio:.3f} ({fmt(median([tune_wall[e] for e in epochs]))} s vs "
            f"{fmt(median([bare_wall[e] for e in epochs]))} s)", "≤ 1.03", ratio <= 1.03,
            note="configs differ: " + ", ".join(tune["config_differs"]) if tune["config_differs"] else "")
    inside = median([tune_fit[e] for e in epochs if e < len(tune_fit)])
    fig.add("  Tune's time per epoch outside fit() (checkpoint + report), and / fit()'s epoch in the trial",
            f"{overhead:.3f} s; {(inside + overhead) / inside:.4f}",
            note="same process, so insensitive to the machine's load")
    fig.add("  fit()'s own epoch time, in the trial / bare",
            f"{inside / median([bare_wall[e] for e in epochs]):.3f}")
    spread = [min(ratios), max(ratios)] if ratios else [float("nan")] * 2
    fig.add("  per-epoch ratios (min-max)", f"{spread[0]:.3f}-{spread[1]:.3f}")
    beside = sum(tune["cpu_s_beside_trial"].values())
    if beside:
        top = max(tune["cpu_s_beside_trial"].items(), key=lambda item: item[1])
        fig.add("  CPU used beside the trial while it ran (Tune driver + Ray processes)",
                f"{beside / tune['tune_wall_s']:.2f} cores on average (most: {top[0]} {top[1]:.1f} s "
                f"of {tune['tune_wall_s']:.0f} s)")
    ctx.shared["p1"] = fig.raw | {"ratio": ratio, "cfg": cfg, "train_images": len(data.train),
                                  "val_images": len(data.val)}
    return fig


def run_throughput(ctx: Context) -> FigureResult:
    """T1: images/s of training (the train phase of fit(), validation excluded)."""
    fig = FigureResult("T1", "training images/s")
    cfg, data = loop_setup(ctx)
    runs = bare_runs(ctx)
    bare = [m["train_images_per_s"] for run in runs for m in run["metrics"][1:]]
    fig.add(f"training images/s, demo model ({cfg.backbone}, {cfg.image_size}/{cfg.progressive_image_size} px, "
            f"batch {cfg.batch_size}), bare fit(), all CPUs", fmt(median(bare)))
    p1 = ctx.shared.get("p1")
    if p1:
        tuned = [r["train_images_per_s"] for r in p1["tune_results"][1:]]
        fig.add("  same, inside a Tune trial", fmt(median(tuned)))
        fig.raw["tune_train_images_per_s"] = tuned
    walls = [w for run in runs for w in run["wall_s"][1:]]
    full = median(walls)
    fig.add("  epoch wall time (train + validation)", f"{fmt(full)} s for {len(data.train)} + {len(data.val)} images")
    fig.raw.update({"bare_train_images_per_s": bare, "epoch_wall_s": walls})
    fig.sizing = {"train_images": len(data.train), "image_size": cfg.image_size, "epochs": cfg.epochs}
    return fig
