"""P3: ASHA + TPE vs FIFO random search; T2: search cost vs trials; P4: demo search cost and verify.

All searches go through `tuner.search.run_search` (the code `run_search.py` runs) in one local
Ray session, without tracking hooks, on flags parsed by `tuner.cli.parse_settings`:

- ASHA + TPE: `run_search.py --space stage_epochs` with its defaults (TPE, the seed recipe as the
  first trial, the first rung placed by tuner.rungs, prefix sharing on);
- FIFO random: the same command plus `--sampler random --grace-period EPOCHS --no-share-prefix`
  (no rung below the last epoch, every epoch trained).

Both arms use the same trials, --seed and default resources. "Best" is the summary's best_value
(the best final macro-F1 of completed trials); epochs are the summary's `epochs_trained`
(reported epochs less those replayed from a shared prefix) and `epochs_consumed`. P4 adds
`run_search.py verify` on the demo search. Sized by the mode's `search` profile (trials,
epochs, search seeds, T2's trial counts, verify seeds).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from bench.datasets import bench_dataset, config_flags
from bench.processes import PYTHON, ensure_ray, finish, launch, run_search_inprocess, say
from bench.profiles import REPO, Context
from bench.rows import FigureResult, fmt, fmt_s, mean_std

SPACE = "stage_epochs"
SUMMARY_KEYS = ("epochs_consumed", "epochs_trained", "prefix_sharing", "first_rung_ties", "seed_trial",
                "best_value", "num_trials", "num_stopped_early", "num_failed", "wall_time_s", "best_trial_id",
                "experiment", "storage_path", "best_config", "sampler")


def epochs_of(prof: dict) -> int:
    """The epochs of one training at `prof`'s sizing (None: the demo recipe's own)."""
    from trainable.cli_config import DEMO_RECIPE

    return prof["epochs"] or DEMO_RECIPE["epochs"]


def arm_flags(arm: str, epochs: int) -> list[str]:
    """What each arm adds to the search's flags: ASHA + TPE is the default search as it stands."""
    if arm == "asha":
        return []
    if arm == "fifo":  # a rung only at the last epoch pauses or stops nothing; no prefix reuse
        return ["--sampler", "random", "--grace-period", str(epochs), "--no-share-prefix"]
    raise ValueError(f"unknown arm {arm!r}")


def search_flags(prof: dict, storage: Path, *, trials: int, seed: int, arm: str, name: str) -> list[str]:
    """`run_search.py` flags of one bench search: the demo recipe on the profile's data and size."""
    flags = config_flags(bench_dataset(prof["data"]), prof["size"], prof["epochs"]) + [
        "--space", SPACE, "--num-samples", str(trials), "--seed", str(seed),
        "--storage-path", str(storage), "--name", name]
    return flags + arm_flags(arm, epochs_of(prof))


def search(ctx: Context, prof: dict, *, trials: int, seed: int, arm: str) -> dict:
    """One search (cached for the run: P3's ASHA run on the first seed is also T2's and P4's)."""
    return ctx.once(f"search-{arm}-n{trials}-s{seed}", lambda: _search(ctx, prof, trials, seed, arm))


def _search(ctx: Context, prof: dict, trials: int, seed: int, arm: str) -> dict:
    name = f"{arm}-n{trials}-s{seed}-{ctx.run_id}"
    flags = search_flags(prof, ctx.storage, trials=trials, seed=seed, arm=arm, name=name)
    ensure_ray(ctx.log("ray"))
    say(f"{arm} search, {trials} trials x {epochs_of(prof)} epochs, seed {seed}")
    summary = run_search_inprocess(flags, ctx.log(name))
    out = {key: summary.get(key) for key in SUMMARY_KEYS} | {"bench_wall_s": summary["bench_wall_s"]}
    say(f"{arm} seed {seed}: {out['epochs_trained']} epochs trained of {out['epochs_consumed']}, best "
        f"{fmt(out['best_value'], 4)}, {fmt_s(out['bench_wall_s'])}")
    return out


def _data_counts(prof: dict) -> dict:
    """Train / val image counts, and the macro-F1 of a model that predicts one class for every image."""
    import csv
    from collections import Counter

    paths = bench_dataset(prof["data"])
    counts = {}
    for split in ("train", "val"):
        with open(paths[f"{split}_meta"], newline="") as handle:
            rows = list(csv.reader(handle))
        counts[f"{split}_images"] = len(rows) - 1
    labels = Counter(row[rows[0].index("label_61")] for row in rows[1:])  # val
    # predicting class c everywhere: F1(c) = 2 n_c / (N + n_c), 0 for every other covered class
    counts["one_class_macro_f1"] = max(2 * n / (len(rows) - 1 + n) for n in labels.values()) / len(labels)
    return counts


def _sizing(prof: dict, counts: dict) -> dict:
    from trainable.cli_config import DEMO_RECIPE

    size = prof["size"] or (DEMO_RECIPE["image_size"], DEMO_RECIPE["progressive_image_size"])
    return {"trials": prof["trials"], "epochs": epochs_of(prof), "first_rung": "automatic (tuner.rungs)",
            "reduction_factor": "default", "image_size": list(size),
            "data": prof["data"] or "whole demo data", **counts}


# ---------------------------------------------------------------------------------- P3
def run_p3(ctx: Context) -> FigureResult:
    prof = ctx.profile["search"]
    fig = FigureResult("P3", "ASHA + TPE vs FIFO random")
    counts = _data_counts(prof)
    fig.sizing = _sizing(prof, counts) | {"seeds": list(prof["seeds"])}
    runs = {"asha": [], "fifo": []}
    for i, seed in enumerate(prof["seeds"]):
        arms = ("asha", "fifo") if i % 2 == 0 else ("fifo", "asha")  # alternate against load drift
        for arm in arms:
            runs[arm].append(search(ctx, prof, trials=prof["trials"], seed=seed, arm=arm))
    fig.raw = runs
    p3_rows(fig, runs, epochs_of(prof), counts["one_class_macro_f1"])
    return fig


def p3_rows(fig: FigureResult, runs: dict[str, list[dict]], epochs: int, one_class_f1: float) -> None:
    """P3's rows from both arms' search summaries (one per search seed)."""
    asha, fifo = runs["asha"], runs["fifo"]
    seeds, trials = len(asha), asha[0]["num_trials"]
    trained = mean_std([r["epochs_trained"] for r in asha])
    consumed = mean_std([r["epochs_consumed"] for r in asha])
    fifo_epochs = mean_std([r["epochs_consumed"] for r in fifo])
    ratio = trained[0] / fifo_epochs[0]
    fig.add(f"epochs trained, ASHA+TPE / FIFO random ({trials} trials x {epochs} epochs, {seeds} search seeds)",
            f"{ratio:.2f}× ({trained[0]:.1f} ± {trained[1]:.1f} vs {fifo_epochs[0]:.1f} ± {fifo_epochs[1]:.1f})",
            "≤ 0.4×", ratio <= 0.4,
            note="judged on epochs trained: ASHA's reported epochs less those prefix sharing replayed")
    fig.add("  epochs consumed (every reported epoch), ASHA+TPE / FIFO random",
            f"{consumed[0] / fifo_epochs[0]:.2f}× ({consumed[0]:.1f} ± {consumed[1]:.1f} vs {fifo_epochs[0]:.1f})")
    best = {arm: mean_std([r["best_value"] for r in rs]) for arm, rs in runs.items()}
    diff = best["asha"][0] - best["fifo"][0]
    se = math.sqrt(best["asha"][1] ** 2 / seeds + best["fifo"][1] ** 2 / len(fifo))
    enough = seeds >= 3 and len(fifo) >= 3
    fig.add("best macro-F1 (completed trials), ASHA+TPE vs FIFO random, mean ± std over search seeds",
            f"{best['asha'][0]:.4f} ± {best['asha'][1]:.4f} vs {best['fifo'][0]:.4f} ± {best['fifo'][1]:.4f}",
            "not lower beyond seed noise", (diff >= -2 * se) if enough else None,
            note=f"ASHA − FIFO {diff:+.4f}, 2 SE {2 * se:.4f}" + ("" if enough else "; < 3 seeds: no verdict"))
    seed_recipe = [r["seed_trial"]["value"] for r in fifo
                   if r.get("seed_trial") and r["seed_trial"].get("epochs") == epochs]
    level = mean_std(seed_recipe)
    fig.add("  level the models reach: the seed recipe (FIFO's trial 0, all epochs), macro-F1 over seeds",
            f"{level[0]:.4f} ± {level[1]:.4f} ({len(seed_recipe)} seeds)",
            note=f"a model predicting one class for every image scores {one_class_f1:.4f}")
    walls = {arm: mean_std([r["bench_wall_s"] for r in rs]) for arm, rs in runs.items()}
    fig.add("  search wall time, ASHA+TPE vs FIFO random", f"{fmt_s(walls['asha'][0])} vs {fmt_s(walls['fifo'][0])}")
    ties = [r["first_rung_ties"] or {} for r in asha]
    worst = max((t.get("tied", 0) / r["num_trials"] for t, r in zip(ties, asha, strict=True)), default=0.0)
    fig.add("  ASHA first rung (automatic): trials tied there, per search seed",
            ", ".join(f"{t.get('tied', '?')}/{t.get('scored', '?')} at epoch {t.get('epoch', '?')}" for t in ties),
            "≤ 10 % of trials", worst <= 0.10, note="search_summary.json first_rung_ties; ties rank by val loss")
    sharing = [r["prefix_sharing"] or {} for r in asha]
    fig.add("  ASHA trials stopped early; trials forked from a shared prefix; epochs shared (all seeds)",
            f"{sum(r['num_stopped_early'] for r in asha)} of {sum(r['num_trials'] for r in asha)}; "
            f"{sum(s.get('trials_forked', 0) for s in sharing)}; {sum(s.get('epochs_shared', 0) for s in sharing)}")


# ---------------------------------------------------------------------------------- T2
def run_growth(ctx: Context) -> FigureResult:
    """T2: wall time and epochs of the ASHA + TPE search with more and more trials (P3's sizing)."""
    prof = ctx.profile["search"]
    fig = FigureResult("T2", "search cost vs number of trials")
    seed = prof["seeds"][0]
    fig.sizing = _sizing(prof, _data_counts(prof)) | {"trial_counts": list(prof["scaling"]), "seed": seed}
    for trials in prof["scaling"]:
        result = search(ctx, prof, trials=trials, seed=seed, arm="asha")  # P3's run where the count matches
        fig.raw[str(trials)] = result
        ties = result["first_rung_ties"] or {}
        fig.add(f"ASHA+TPE search, {trials} trials x {epochs_of(prof)} epochs",
                f"{fmt_s(result['bench_wall_s'])}, {result['epochs_trained']} epochs trained of "
                f"{result['epochs_consumed']} ({result['num_stopped_early']} stopped early, first rung at epoch "
                f"{ties.get('epoch', '?')})")
    return fig


# ---------------------------------------------------------------------------------- P4
def demo_search(ctx: Context) -> dict:
    """The demo search: `run_search.py --space stage_epochs --demo` as a subprocess with --full;
    otherwise P3's ASHA search on its first seed (default mode: the demo's own settings, seed 42)."""
    def compute():
        if ctx.mode == "full":
            return _real_demo_search(ctx)
        prof = ctx.profile["search"]
        result = search(ctx, prof, trials=prof["trials"], seed=prof["seeds"][0], arm="asha")
        # "scaled": not the user's command end to end, so P6 projects its wall time (fig_cli)
        return result | {"scaled": True, "epochs_per_training": epochs_of(prof)}

    return ctx.once("demo_search", compute)


def _real_demo_search(ctx: Context) -> dict:
    import json

    name = f"p4-demo-{ctx.run_id}"
    say("P4/P6: the demo search, end to end: run_search.py --space stage_epochs --demo")
    started = time.perf_counter()
    proc = launch([PYTHON, str(REPO / "run_search.py"), "--space", SPACE, "--demo",
                   "--storage-path", str(ctx.storage), "--name", name], ctx.log(name), cwd=ctx.work / "demo_search")
    code = finish(proc, timeout=4 * 3600)
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"demo search exited {code}; see {ctx.log(name)}")
    summary = json.loads((ctx.storage / name / "search_summary.json").read_text())
    from trainable.cli_config import DEMO_RECIPE

    return summary | {"bench_wall_s": wall, "scaled": False, "epochs_per_training": DEMO_RECIPE["epochs"]}


def run_verify(ctx: Context, storage: str, name: str, seeds: int) -> dict:
    """`run_search.py verify` on the search, no MLflow (the figure is the models, not tracking); its verify.json."""
    import json

    say(f"P4: run_search.py verify --experiment {name} --seeds {seeds}")
    started = time.perf_counter()
    proc = launch([PYTHON, str(REPO / "run_search.py"), "verify", "--experiment", name, "--storage-path", storage,
                   "--seeds", str(seeds), "--no-mlflow"], ctx.log("p4-verify"), cwd=ctx.work / "cwd" / "p4")
    if finish(proc, timeout=4 * 3600) != 0:
        raise RuntimeError(f"verify failed; see {ctx.log('p4-verify')}")
    result = json.loads((Path(storage) / name / "verify.json").read_text())
    return result | {"bench_wall_s": time.perf_counter() - started}


def run_p4(ctx: Context) -> FigureResult:
    prof = ctx.profile["search"]
    fig = FigureResult("P4", "demo search cost and verify")
    result = demo_search(ctx)
    fig.sizing = (_sizing(prof, _data_counts(prof)) | {"seed": prof["seeds"][0]} if result.get("scaled")
                  else {"search": "run_search.py --space stage_epochs --demo (defaults)"})
    fig.sizing["verify_seeds"] = prof["verify_seeds"]
    verify = run_verify(ctx, result["storage_path"], result["experiment"], prof["verify_seeds"])
    fig.raw = {"search": result, "verify": verify}
    p4_rows(fig, result, verify, timed=ctx.mode != "quick")
    return fig


def p4_rows(fig: FigureResult, result: dict, verify: dict, timed: bool) -> None:
    """P4's rows from the demo search's summary and its verify.json; `timed`: the verify time goal applies."""
    per_training = result["epochs_per_training"]
    cost = result["epochs_trained"] / per_training
    fig.add(f"demo search epochs trained / one full training ({result['num_trials']} trials)",
            f"{cost:.2f}× ({result['epochs_trained']} / {per_training} epochs)", "≤ 3× (moonshot ≤ 2×)", cost <= 3,
            note="moonshot met" if cost <= 2 else "")
    ties, sharing = result.get("first_rung_ties") or {}, result.get("prefix_sharing") or {}
    fig.add("  epochs consumed (every reported epoch, shared prefixes included) / one full training",
            f"{result['epochs_consumed'] / per_training:.2f}× ({result['epochs_consumed']} epochs; "
            f"{sharing.get('trials_forked', 0)} trials forked, {sharing.get('epochs_shared', 0)} epochs shared)")
    fig.add("  trials stopped early by ASHA; trials tied at its first rung",
            f"{result['num_stopped_early']} of {result['num_trials']}; {ties.get('tied', '?')} of "
            f"{ties.get('scored', '?')} at epoch {ties.get('epoch', '?')}")
    k = len(verify["seeds"])
    f1 = verify["comparison"]["macro_f1"]
    same = verify["winner_trial_id"] == verify["baseline_trial_id"]
    fig.add(f"verify: Δ macro-F1, winner − seed recipe (trial 0), {k} training seeds",
            f"{f1['difference']:+.4f} ± {f1['standard_error']:.4f} SE ({f1['winner_mean']:.4f} ± "
            f"{f1['winner_std']:.4f} vs {f1['baseline_mean']:.4f} ± {f1['baseline_std']:.4f})",
            "> 2 SE", bool(f1["beyond_noise"]), note="the winner is the seed recipe itself" if same else "")
    tail = verify["comparison"]["tail_acc"]
    fig.add("  verify: Δ tail-class accuracy, winner − seed recipe",
            f"{tail['difference']:+.2f} ± {tail['standard_error']:.2f} SE points ({tail['winner_mean']:.2f} % vs "
            f"{tail['baseline_mean']:.2f} %)", note="beyond 2 SE" if tail["beyond_noise"] else "within 2 SE")
    trial, retrained = result.get("best_value"), verify["winner"]["macro_f1"][0]
    if trial is not None:  # verify's first seed is the trials' own, at their thread count
        same_score = math.isclose(retrained, trial, rel_tol=1e-6, abs_tol=1e-9)
        fig.add("  verify's winner retrain on the trials' seed reproduces the best trial's macro-F1",
                f"{retrained:.4g} vs trial {trial:.4g}", "equal", same_score)
    wall = verify.get("bench_wall_s")
    fig.add(f"  verify wall time ({len(verify['seeds']) * (1 if same else 2)} trainings)", fmt_s(wall),
            "≤ 15 min" if timed else "", (wall <= 900) if timed and wall is not None else None)
