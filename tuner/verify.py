"""`python run_search.py verify --experiment NAME [--seeds 3]`: is the search's winner really better?

A search ranks trials on one training seed, and a trial's score moves with the seed alone. verify
retrains the winner (the best trial's config) and the seed recipe (trial 0: the base config the
search enqueued first) on K training seeds each, at the trials' torch thread count so that the first
seed (the trials' own) reproduces the trials' scores, and compares their final-epoch metrics:

    winner - baseline = mean difference;  standard error = sqrt(s_w^2 / K + s_b^2 / K)
    "beyond seed noise" when the difference exceeds 2 standard errors.

Writes verify.json into the experiment directory (keys `winner.macro_f1`, `winner.val_acc`,
`winner.tail_acc`, the same under `baseline`, one value per seed; `seeds`; both configs) and logs
every run as a child of the search's MLflow parent run (tags `croptune.role=verify`,
`verify=true`, `verify_group=winner|baseline`, `seed`). `run_search.py export` reads verify.json and
says whether the exported config was verified, and against what.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from trainable.config import TrainConfig
from trainable.errors import UserError
from tuner.cli import METRICS
from tuner.experiment import BASE_CONFIG_FILE
from tuner.export import VERIFY_FILE, best_trial, find_experiment
from tuner.tracking import runs, store
from tuner.tracking.hooks import add_search_arguments, checked_target
from tuner.tracking.ui import where_to_look

GROUPS = ("winner", "baseline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_search.py verify", allow_abbrev=False,
        description="Retrain the search's winner and its seed recipe (trial 0) on several training "
                    "seeds and say whether the winner beats it beyond seed noise.")
    parser.add_argument("--experiment", required=True,
                        help="search name (the Tune experiment under --storage-path) or its directory")
    parser.add_argument("--storage-path", default="ray_results", help="default %(default)s")
    parser.add_argument("--seeds", type=int, default=3,
                        help="training seeds per config: the trials' own seed, then seed+1, ... (default 3)")
    add_search_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.seeds < 2:
        raise UserError(f"--seeds {ns.seeds}: need at least 2 seeds to estimate seed noise")
    experiment_dir = find_experiment(ns.experiment, ns.storage_path)
    best = best_trial(experiment_dir)
    winner = TrainConfig.from_dict(best["config"], source=f"{experiment_dir}: best_config").validate()
    baseline_id, baseline = baseline_trial(experiment_dir)
    threads = trial_threads(experiment_dir)
    seeds = [winner.seed + i for i in range(ns.seeds)]
    tracker = VerifyTracker.from_namespace(ns, best.get("experiment") or experiment_dir.name)
    same = winner == baseline
    groups = ("winner",) if same else GROUPS
    trainings = [(group, cfg.replace(seed=seed))
            for seed in seeds for group, cfg in (("winner", winner), ("baseline", baseline)) if group in groups]
    print(f"verify {experiment_dir.name}: winner trial {best['trial_id']} vs seed recipe trial {baseline_id}"
          f"{' (= the seed recipe: trained once per seed)' if same else ''}, seeds {seeds}, {threads} torch "
          f"thread(s) per run ({len(trainings)} trainings of {winner.epochs} epochs)", flush=True)
    scores: dict = {group: {key: [] for key in METRICS} for group in GROUPS}
    from trainable.data.dataset import load_data

    data = {group: load_data(cfg, progress=False) for group, cfg in (("winner", winner), ("baseline", baseline))
            if group in groups}  # the data does not depend on the seed: loaded once per config
    started = time.time()
    for index, (group, cfg) in enumerate(trainings, 1):
        metrics = train_one(cfg, data[group], threads, tracker, group)
        for key in METRICS:
            scores[group][key].append(float(metrics[key]))
        print(f"  [{index}/{len(trainings)}] {group:8s} seed {cfg.seed}: macro-F1 {metrics['macro_f1']:.4f} | "
              f"val acc {metrics['val_acc']:.2f}% | tail acc {metrics['tail_acc']:.2f}% "
              f"({time.time() - started:.0f} s so far)", flush=True)
    if same:  # one config: its trainings are both groups' (the difference is 0 by construction)
        scores["baseline"] = {key: list(values) for key, values in scores["winner"].items()}
    result = {
        "experiment": experiment_dir.name, "seeds": seeds, "threads": threads,
        "winner_trial_id": best["trial_id"], "baseline_trial_id": baseline_id,
        **{group: {**scores[group], "config": cfg.to_dict()}
           for group, cfg in (("winner", winner), ("baseline", baseline))},
        "comparison": {key: compare(scores["winner"][key], scores["baseline"][key]) for key in METRICS},
        "wall_time_s": round(time.time() - started, 1),
    }
    from tuner.experiment import write_json_atomic

    write_json_atomic(experiment_dir / VERIFY_FILE, result)
    print(format_verify(result), flush=True)
    print(f"wrote {experiment_dir / VERIFY_FILE}")
    tracker.finish()
    return 0


def baseline_trial(experiment_dir: Path) -> tuple[str, TrainConfig]:
    """Trial 0 (the first trial Tune created: the seed point) as (trial id, full config)."""
    from search_spaces import overrides_from_config

    base_path = experiment_dir / BASE_CONFIG_FILE
    if not base_path.is_file():
        raise UserError(f"{experiment_dir}: no {BASE_CONFIG_FILE}: not a croptune search (or it never started)")
    base = TrainConfig.from_dict(json.loads(base_path.read_text()), source=str(base_path))
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(str(experiment_dir)).trials
    except Exception as exc:  # Ray's messages for unreadable experiments vary
        raise UserError(f"{experiment_dir}: cannot read the Tune experiment ({exc})") from None
    if not trials:
        raise UserError(f"{experiment_dir}: the search has no trials")
    from tuner.summary import trial_number

    first = min(trials, key=lambda trial: trial_number(trial, 1 << 30))
    return first.trial_id, base.replace(**overrides_from_config(first.config or {})).validate()


def trial_threads(experiment_dir: Path) -> int:
    """The torch thread count the trials ran with (their CPUs per trial), so scores reproduce."""
    from tuner.experiment import META_FILE

    try:
        meta = json.loads((experiment_dir / META_FILE).read_text())
        per_trial = meta["resources"]["per_trial"]  # tuner.resources' {"cpu", "gpu"}
        cpus = float(per_trial.get("cpu", 1))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 1
    return max(1, math.floor(cpus))


def train_one(cfg: TrainConfig, data, threads: int, tracker, group: str) -> dict:
    """Train cfg to its last epoch (no checkpoints written); the final epoch's metrics."""
    import torch

    from trainable.train.loop import fit

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    run = tracker.start(group, cfg)
    try:
        last = None
        for result in fit(cfg, data, progress=False):
            last = result.metrics
            tracker.log_epoch(run, result)
    except BaseException:
        tracker.end(run, "FAILED")
        raise
    finally:
        torch.set_num_threads(previous)
    tracker.end(run, "FINISHED")
    return last


def compare(winner: list[float], baseline: list[float]) -> dict:
    """Mean difference, its standard error and whether it exceeds 2 of them."""
    diff = statistics.fmean(winner) - statistics.fmean(baseline)
    se = math.sqrt(statistics.variance(winner) / len(winner) + statistics.variance(baseline) / len(baseline))
    return {"winner_mean": statistics.fmean(winner), "winner_std": statistics.stdev(winner),
            "baseline_mean": statistics.fmean(baseline), "baseline_std": statistics.stdev(baseline),
            "difference": diff, "standard_error": se, "beyond_noise": bool(diff > 2 * se)}


def format_verify(result: dict) -> str:
    lines = [f"verify over {len(result['seeds'])} training seeds {result['seeds']} "
             f"(winner trial {result['winner_trial_id']} vs seed recipe trial {result['baseline_trial_id']}):",
             f"  {'metric':10s} {'winner':>17s} {'seed recipe':>17s} {'difference':>11s}  2 SE"]
    for key in METRICS:
        c = result["comparison"][key]
        verdict = "beyond seed noise" if c["beyond_noise"] else "within seed noise"
        lines.append(f"  {key:10s} {c['winner_mean']:8.4f} ± {c['winner_std']:<6.4f} "
                     f"{c['baseline_mean']:8.4f} ± {c['baseline_std']:<6.4f} {c['difference']:+11.4f}  "
                     f"{2 * c['standard_error']:.4f}: {verdict}")
    return "\n".join(lines)


class VerifyTracker:
    """verify's MLflow runs: one per training, nested under the search's parent run."""

    def __init__(self, uri: str | None, experiment: str, search: str):
        self.uri, self.search = uri, search
        self.client = self.experiment_id = self.parent_id = None
        if uri is None:
            return
        self.client, self.experiment_id = store.open_experiment(uri, experiment)
        parent = runs.find_parent_run(self.client, self.experiment_id, search)
        self.parent_id = parent.info.run_id if parent else None
        if parent is None:
            print(f"note: no search {search!r} in MLflow experiment {experiment!r}; the verify runs are "
                  f"not nested under it (pass the search's --mlflow-experiment / --mlflow-uri)", file=sys.stderr)

    @classmethod
    def from_namespace(cls, ns, search: str) -> VerifyTracker:
        target = checked_target(ns)  # the search's tracking checks; None with --no-mlflow
        return cls(None, "", search) if target is None else cls(*target, search)

    def start(self, group: str, cfg: TrainConfig):
        if self.client is None:
            return None
        tags = {runs.ROLE_TAG: "verify", "verify": "true", "verify_group": group, "seed": str(cfg.seed),
                runs.SEARCH_TAG: self.search, "mlflow.source.name": "run_search.py verify"}
        if self.parent_id:
            tags[runs.PARENT_TAG] = self.parent_id
        run = self.client.create_run(self.experiment_id, run_name=f"verify-{group}-seed{cfg.seed}", tags=tags)
        runs.log_params(self.client, run.info.run_id, cfg.to_dict())
        return run.info.run_id

    def log_epoch(self, run_id, result) -> None:
        if run_id is not None:
            runs.log_epoch_metrics(self.client, run_id, result)

    def end(self, run_id, status: str) -> None:
        if run_id is not None:
            self.client.set_terminated(run_id, status=status)

    def finish(self) -> None:
        if self.client is not None:
            print(where_to_look(self.uri, self.experiment_id, self.parent_id), flush=True)
