"""P3: ASHA + TPE vs FIFO random search; T2: search cost vs trials; P4: demo search cost and retrain.

All searches go through `tuner.search.run_search` (the code `run_search.py` runs) in one local
Ray session, without tracking hooks:

- ASHA + TPE: exactly what `run_search.py --space stage_epochs ...` builds (PruningOptunaSearch
  with TPE, the seed recipe as the first trial, tuner.scheduler.PromotingASHA on `epoch`:
  successive halving that pauses trials at a rung until they rank in its top 1/rf);
- FIFO random: the same search with two changes: the searcher samples with Optuna's
  RandomSampler (same space, same seed point first; `build_searcher` is swapped for this
  search only), and `--grace-period` = `--epochs`, which leaves ASHA no rung below the last
  epoch, so no trial is paused or stopped early (FIFO).

Both arms use the same number of trials, the same --seed (which seeds the sampler and every
trial's training) and the default resources (on 2 CPUs: 2 trials at a time, 1 CPU each).
"Best metric" is the search summary's best_value: the best final macro-F1 among trials that
ran all their epochs (what `export` hands to the retrain).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from bench.common import (
    PYTHON,
    REPO,
    Context,
    FigureResult,
    bench_dataset,
    config_flags,
    ensure_ray,
    finish,
    fmt,
    fmt_s,
    launch,
    mean_std,
    run_search_inprocess,
    say,
)


def random_searcher(settings):
    """tuner.search.build_searcher with Optuna's RandomSampler instead of TPE (FIFO arm)."""
    from optuna.samplers import RandomSampler

    from trainable.config import field_names
    from tuner.prepare import seed_point
    from tuner.search import TIME_ATTR
    from tuner.searcher import BoundSpace, PruningOptunaSearch

    point = seed_point(settings.space, settings.base)
    return PruningOptunaSearch(
        space=BoundSpace(settings.space, settings.base), metric=settings.metric, mode=settings.mode,
        points_to_evaluate=[point] if point else None, sampler=RandomSampler(seed=settings.seed),
        time_attr=TIME_ATTR, max_epochs=settings.base.epochs, config_keys=field_names())


def search(ctx: Context, prof: dict, *, trials: int, seed: int, arm: str, tag: str) -> dict:
    """One search at `prof`'s sizing; arm "asha" (the real thing) or "fifo" (random, no stopping)."""
    paths = bench_dataset(prof["data"])
    epochs = prof["epochs"]
    name = f"{tag}-{arm}-n{trials}-s{seed}-{ctx.run_id}"
    flags = config_flags(paths, prof["size"], epochs) + [
        "--space", "stage_epochs", "--num-samples", str(trials), "--seed", str(seed),
        "--reduction-factor", str(prof["rf"]), "--storage-path", str(ctx.storage), "--name", name]
    grace = epochs if arm == "fifo" else prof.get("grace")
    if grace is not None:
        flags += ["--grace-period", str(grace)]
    ensure_ray(ctx.log("ray"))
    say(f"{tag}: {arm} search, {trials} trials x {epochs} epochs, seed {seed}")
    summary = run_search_inprocess(flags, ctx.log(name), searcher=random_searcher if arm == "fifo" else None)
    best_any = max((r.get("macro_f1", float("-inf")) for rows in summary["trial_results"].values() for r in rows),
                   default=float("nan"))
    out = {k: summary[k] for k in ("epochs_consumed", "best_value", "num_trials", "num_stopped_early",
                                   "num_failed", "wall_time_s", "bench_wall_s", "best_trial_id", "experiment",
                                   "storage_path", "best_config")}
    out["best_any_epoch"] = best_any
    out["tied_at_first_rung"] = _tied(summary["trial_results"], grace or max(1, epochs // 5), summary["metric"])
    say(f"{tag}: {arm} seed {seed}: {out['epochs_consumed']} epochs, best {fmt(out['best_value'])}, "
        f"{fmt_s(out['bench_wall_s'])}")
    return out


def _tied(trial_results: dict, epoch: int, metric: str) -> int:
    """Trials whose score at `epoch` equals another trial's there (tuner.summary.count_ties: the
    count search_summary.json reports as first_rung_ties)."""
    from tuner.summary import count_ties

    return count_ties(next((r.get(metric) for r in rows if r.get("epoch") == epoch), None)
                      for rows in trial_results.values())


def _sizing(prof: dict, data: dict) -> dict:
    return {"trials": prof["trials"], "epochs": prof["epochs"], "grace_period": prof.get("grace"),
            "reduction_factor": prof["rf"], "image_size": prof["size"] or "demo (64/72)",
            "data": prof["data"] or "whole demo data", "train_images": data.get("train_images"),
            "val_images": data.get("val_images")}


def _data_counts(prof: dict) -> dict:
    import csv

    paths = bench_dataset(prof["data"])
    counts = {}
    for split in ("train", "val"):
        with open(paths[f"{split}_meta"], newline="") as handle:
            counts[f"{split}_images"] = sum(1 for _ in csv.reader(handle)) - 1
    return counts


def run_p3(ctx: Context) -> FigureResult:
    prof = ctx.profile["search"]
    fig = FigureResult("P3", "ASHA + TPE vs FIFO random")
    fig.sizing = _sizing(prof, _data_counts(prof)) | {"seeds": list(prof["seeds"])}
    runs = {"asha": [], "fifo": []}
    for i, seed in enumerate(prof["seeds"]):
        arms = ("asha", "fifo") if i % 2 == 0 else ("fifo", "asha")  # alternate against load drift
        for arm in arms:
            runs[arm].append(search(ctx, prof, trials=prof["trials"], seed=seed, arm=arm, tag="p3"))
    ctx.shared["p3_asha_seed0"] = runs["asha"][0]
    fig.raw = runs
    epochs = {arm: mean_std([r["epochs_consumed"] for r in rs]) for arm, rs in runs.items()}
    best = {arm: mean_std([r["best_value"] for r in rs]) for arm, rs in runs.items()}
    walls = {arm: mean_std([r["bench_wall_s"] for r in rs]) for arm, rs in runs.items()}
    ratio = epochs["asha"][0] / epochs["fifo"][0]
    fig.add(f"epochs consumed, ASHA+TPE / FIFO random ({prof['trials']} trials, {len(prof['seeds'])} seeds)",
            f"{ratio:.2f} ({epochs['asha'][0]:.1f} ± {epochs['asha'][1]:.1f} vs "
            f"{epochs['fifo'][0]:.1f} ± {epochs['fifo'][1]:.1f})", "≤ 0.4×", ratio <= 0.4)
    noise = math.sqrt((best["asha"][1] ** 2 + best["fifo"][1] ** 2) / 2)
    gap = best["fifo"][0] - best["asha"][0]
    enough = len(prof["seeds"]) >= 3
    fig.add("best macro-F1 (completed trials), ASHA+TPE vs FIFO random, mean ± std over seeds",
            f"{best['asha'][0]:.4f} ± {best['asha'][1]:.4f} vs {best['fifo'][0]:.4f} ± {best['fifo'][1]:.4f}",
            "not lower beyond noise", (gap <= noise) if enough else None,
            note=f"gap {gap:+.4f}, pooled seed std {noise:.4f}" + ("" if enough else "; < 3 seeds: no verdict"))
    fig.add("  search wall time, ASHA+TPE vs FIFO random",
            f"{fmt_s(walls['asha'][0])} vs {fmt_s(walls['fifo'][0])}")
    stopped = sum(r["num_stopped_early"] for r in runs["asha"])
    tied = sum(r["tied_at_first_rung"] for r in runs["asha"])
    total = sum(r["num_trials"] for r in runs["asha"])
    grace = prof.get("grace") or max(1, prof["epochs"] // 5)
    fig.add(f"  ASHA trials stopped early; trials whose epoch-{grace} score ties another's",
            f"{stopped} of {total}; {tied} of {total}",
            note="ties on the metric are ranked by validation loss")
    return fig


def run_growth(ctx: Context) -> FigureResult:
    """T2: wall time and epochs of an ASHA + TPE search with 2, 4, 8 trials (same settings, seed 0)."""
    prof = ctx.profile["search"]
    fig = FigureResult("T2", "search cost vs number of trials")
    fig.sizing = _sizing(prof, _data_counts(prof)) | {"trial_counts": list(prof["scaling"])}
    reuse = ctx.shared.get("p3_asha_seed0")
    for trials in prof["scaling"]:
        if reuse is not None and trials == prof["trials"] and prof["seeds"][0] == 0:
            result = reuse
        else:
            result = search(ctx, prof, trials=trials, seed=0, arm="asha", tag="t2")
        fig.raw[str(trials)] = result
        fig.add(f"ASHA+TPE search, {trials} trials x {prof['epochs']} epochs",
                f"{fmt_s(result['bench_wall_s'])}, {result['epochs_consumed']} epochs "
                f"({result['num_stopped_early']} stopped early)")
    return fig


# ---------------------------------------------------------------------------------- P4
def demo_search(ctx: Context) -> dict:
    """The demo search: real (`run_search.py --space stage_epochs --demo`, full mode) or at bench size."""
    def compute():
        prof = ctx.profile["demo_search"]
        if ctx.mode == "full":
            return _real_demo_search(ctx)
        result = search(ctx, prof, trials=prof["trials"], seed=42, arm="asha", tag="p4")
        result["scaled"] = True
        result["epochs_per_training"] = prof["epochs"]
        return result

    return ctx.once("demo_search", compute)


def _real_demo_search(ctx: Context) -> dict:
    import json

    name = f"p4-demo-{ctx.run_id}"
    cwd = ctx.work / "demo_search"
    cwd.mkdir(parents=True, exist_ok=True)
    say("P4/P6: the demo search, end to end: run_search.py --space stage_epochs --demo")
    started = time.perf_counter()
    proc = launch([PYTHON, str(REPO / "run_search.py"), "--space", "stage_epochs", "--demo",
                   "--storage-path", str(ctx.storage), "--name", name], ctx.log(name), cwd=cwd)
    code = finish(proc, timeout=4 * 3600)
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"demo search exited {code}; see {ctx.log(name)}")
    summary = json.loads((ctx.storage / name / "search_summary.json").read_text())
    from trainable.cli_config import DEMO_RECIPE

    return summary | {"bench_wall_s": wall, "scaled": False, "epochs_per_training": DEMO_RECIPE["epochs"]}


def _trial_threads(storage: str, name: str) -> int | None:
    """The torch threads each trial of the search ran with (its CPUs per trial), from its meta file."""
    import json

    from tuner.experiment import META_FILE

    try:
        meta = json.loads((Path(storage) / name / META_FILE).read_text())
        return max(1, int(meta["resources"]["per_trial"]["cpu"]))
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _retrain(ctx: Context, argv: list[str], save_dir: Path, label: str, threads: int | None) -> dict:
    from trainable.checkpoint import load_checkpoint

    say(f"P4: retrain, {label}" + (f" ({threads} torch threads, as the trials)" if threads else ""))
    started = time.perf_counter()
    # CPU kernels sum in a thread-count-dependent order: with the trials' thread count the retrain
    # of the exported config can reproduce its trial exactly, and both retrains compare alike
    env = {"OMP_NUM_THREADS": str(threads)} if threads else None
    proc = launch([PYTHON, *argv, "--save-dir", str(save_dir), "--save-freq", "0"], ctx.log(f"p4-{label}"),
                  cwd=ctx.work / "cwd" / "p4", env=env)
    code = finish(proc, timeout=4 * 3600)
    if code != 0:
        raise RuntimeError(f"retrain {label} exited {code}; see {ctx.log(f'p4-{label}')}")
    state = load_checkpoint(save_dir / "last.pth")
    return {"macro_f1": state["macro_f1"], "tail_acc": state["tail_mean_acc"], "val_acc": state["val_acc"],
            "best_val_acc": state["best_val_acc"], "wall_s": time.perf_counter() - started,
            "epochs": state["epoch"]}


def _help_text(argv: list[str]) -> str:
    import subprocess

    done = subprocess.run([PYTHON, *argv, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    return done.stdout


def run_p4(ctx: Context) -> FigureResult:
    prof = ctx.profile["demo_search"]
    fig = FigureResult("P4", "demo search cost and retrain")
    result = demo_search(ctx)
    per_training = result["epochs_per_training"]
    fig.sizing = (_sizing(prof, _data_counts(prof)) if result.get("scaled")
                  else {"search": "run_search.py --space stage_epochs --demo (defaults)"})
    cost = result["epochs_consumed"] / per_training
    fig.add(f"demo search epochs / one full training ({result['num_trials']} trials)",
            f"{cost:.2f}× ({result['epochs_consumed']} / {per_training} epochs)", "≤ 3×", cost <= 3)
    if "tied_at_first_rung" in result:
        fig.add("  trials stopped early by ASHA; trials tied at its first rung",
                f"{result['num_stopped_early']} of {result['num_trials']}; "
                f"{result['tied_at_first_rung']} of {result['num_trials']}")
    storage, name = result["storage_path"], result["experiment"]
    best_yaml = ctx.work / "p4-best.yaml"
    proc = launch([PYTHON, str(REPO / "run_search.py"), "export", "--experiment", name, "--storage-path", storage,
                   "--out", str(best_yaml)], ctx.log("p4-export"), cwd=ctx.work / "cwd" / "p4")
    if finish(proc, timeout=300) != 0:
        raise RuntimeError(f"export failed; see {ctx.log('p4-export')}")
    if result.get("scaled"):
        seed_argv = ["-m", "trainable", *config_flags(bench_dataset(prof["data"]), prof["size"], prof["epochs"])]
    else:
        seed_argv = ["-m", "trainable", "--demo"]
    retrain = [str(REPO / "run_search.py"), "retrain", "--config", str(best_yaml)]
    if result.get("scaled"):
        # best.yaml holds the bench data's paths, but with `demo: true` in a --config the training
        # CLI swaps in the demo dataset's paths unless they are given as flags (see the report).
        paths = bench_dataset(prof["data"])
        retrain += [arg for key in ("train_meta", "val_meta", "class_weights")
                    for arg in ("--" + key.replace("_", "-"), paths[key])]
    if "--no-mlflow" in _help_text(retrain):  # the figure is the model's quality, not tracking's
        retrain.append("--no-mlflow")
    threads = _trial_threads(storage, name)
    exported = _retrain(ctx, retrain, ctx.work / "p4-retrain-best", "exported", threads)
    seed = _retrain(ctx, seed_argv, ctx.work / "p4-retrain-seed", "seed-defaults", threads)
    fig.raw = {"search": result, "exported": exported, "seed_defaults": seed, "retrain_threads": threads,
               "best_yaml": best_yaml.read_text() if best_yaml.is_file() else None}
    trial_score = result.get("best_value")
    if trial_score is not None:
        same = math.isclose(exported["macro_f1"], trial_score, rel_tol=1e-6, abs_tol=1e-9)
        fig.add("  retrain of the exported config reproduces the best trial's macro-F1",
                f"{exported['macro_f1']:.4g} vs trial {trial_score:.4g}", "", None,
                note="same data, seed and epochs" + ("" if same else ": differs"))
    for key, label, unit in (("macro_f1", "macro-F1", ""), ("tail_acc", "tail-class accuracy", " %")):
        ok = exported[key] >= seed[key]
        fig.add(f"retrain {label}: exported best config vs seed defaults",
                f"{exported[key]:.4g}{unit} vs {seed[key]:.4g}{unit}", "≥ seed", ok,
                note="one training seed each: compare with P3's seed-to-seed std")
    return fig
