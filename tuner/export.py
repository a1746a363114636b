"""`python run_search.py export --experiment NAME --out best.yaml`: the best trial as a complete
TrainConfig YAML, ready for `python run_search.py retrain --config best.yaml`.

The best trial and its full config come from `search_summary.json` (written by the search
when it ends). For a search that never finished, the best trial is read from the Tune
experiment with ExperimentAnalysis and applied to the base config the search saved
(`base_config.json` in the experiment directory). The YAML's header also says whether
`run_search.py verify` checked this config against the seed recipe (its verify.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
from pathlib import Path

import yaml

from trainable.config import TrainConfig, scale_schedule
from trainable.errors import UserError
from tuner.experiment import BASE_CONFIG_FILE, SUMMARY_FILE

VERIFY_FILE = "verify.json"  # written by `run_search.py verify` (tuner.verify) into the experiment directory


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_search.py export",
        description="Write the best trial's complete TrainConfig as YAML.",
        allow_abbrev=False)  # a typo must not silently pick another flag
    parser.add_argument("--experiment", required=True,
                        help="search name (the Tune experiment under --storage-path) or its directory")
    parser.add_argument("--storage-path", default="ray_results", help="default %(default)s")
    parser.add_argument("--out", default="best.yaml", help="YAML to write (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of the final run; the stage schedule is rescaled to it")
    parser.add_argument("--metric", default=None,
                        help="only without a search summary: metric to rank trials (default macro_f1)")
    parser.add_argument("--mode", choices=("max", "min"), default=None,
                        help="only without a search summary (default max)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    experiment_dir = find_experiment(args.experiment, args.storage_path)
    best = best_trial(experiment_dir, args.metric, args.mode)
    config = TrainConfig.from_dict(best["config"], source=f"{experiment_dir}: best_config").validate()
    note = ""
    if args.epochs is not None:
        old = config.epochs
        config = rescale(config, args.epochs)
        note = f"epochs rescaled {old} -> {args.epochs} (stage schedule scaled with them)"
    verified = verified_note(experiment_dir, best["config"])
    out = Path(args.out)
    write_config(out, config, header=header_lines(best, note) + [verified])
    print(f"wrote {out} (trial {best['trial_id']}, {best['metric']}={best['value']}); {verified}; "
          f"retrain with: {shlex.join(['python', 'run_search.py', 'retrain', '--config', str(out)])}")
    return 0


def find_experiment(experiment: str, storage_path: str) -> Path:
    as_dir = Path(experiment).expanduser()
    candidates = [as_dir] if as_dir.is_dir() else []
    candidates.append(Path(storage_path).expanduser() / experiment)
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    raise UserError(f"no search named {experiment!r} under {storage_path}: pass --storage-path "
                    f"or the experiment directory")


def best_trial(experiment_dir: Path, metric: str | None = None, mode: str | None = None) -> dict:
    """{"trial_id", "metric", "mode", "value", "config" (full TrainConfig dict), "experiment"}."""
    summary_path = experiment_dir / SUMMARY_FILE
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError as exc:
            raise UserError(f"{summary_path}: not valid JSON ({exc})") from None
        if not summary.get("best_config"):
            raise UserError(f"{summary_path}: the search has no best trial (did every trial fail?)")
        return {"trial_id": summary.get("best_trial_id"), "metric": summary.get("metric"),
                "mode": summary.get("mode"), "value": summary.get("best_value"),
                "config": summary["best_config"],
                "experiment": summary.get("experiment", experiment_dir.name)}
    return _best_from_tune(experiment_dir, metric or "macro_f1", mode or "max")


def _best_from_tune(experiment_dir: Path, metric: str, mode: str) -> dict:
    base_path = experiment_dir / BASE_CONFIG_FILE
    if not base_path.is_file():
        raise UserError(f"{experiment_dir}: neither {SUMMARY_FILE} nor {BASE_CONFIG_FILE}: not a croptune search "
                        f"(or it stopped before starting)")
    from ray.tune import ExperimentAnalysis

    from search_spaces import overrides_from_config

    try:
        analysis = ExperimentAnalysis(str(experiment_dir), default_metric=metric, default_mode=mode)
        trial = analysis.get_best_trial(metric, mode, scope="all")
    except Exception as exc:  # Ray's messages for unreadable or empty experiments vary
        raise UserError(f"{experiment_dir}: cannot read the Tune experiment ({exc})") from None
    if trial is None:
        raise UserError(f"{experiment_dir}: no trial reported {metric}")
    base = json.loads(base_path.read_text())
    frame = analysis.trial_dataframes.get(trial.trial_id)
    if frame is not None and metric in frame and frame[metric].notna().any():
        series = frame[metric].dropna()
        value = float(series.max() if mode == "max" else series.min())
    else:
        value = trial.last_result.get(metric)
    return {"trial_id": trial.trial_id, "metric": metric, "mode": mode, "value": value,
            "config": {**base, **overrides_from_config(trial.config)},
            "experiment": experiment_dir.name}


def rescale(config: TrainConfig, epochs: int) -> TrainConfig:
    if epochs < 1:
        raise UserError(f"--epochs={epochs}: must be at least 1")
    values = scale_schedule(config.to_dict(), config.epochs, epochs)
    values["epochs"] = epochs
    return TrainConfig.from_dict(values, source="--epochs").validate()


def header_lines(best: dict, note: str = "") -> list[str]:
    lines = [
        "croptune best configuration (a complete TrainConfig)",
        f"experiment: {best.get('experiment')}",
        f"trial: {best['trial_id']}",
        f"metric: {best['metric']} = {best['value']} ({best.get('mode') or 'max'})",
        f"exported: {datetime.datetime.now().isoformat(timespec='seconds')}",
    ]
    return lines + ([note] if note else [])


def write_config(path: Path, config: TrainConfig, header: list[str]) -> None:
    body = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
    text = "".join(f"# {line}\n" for line in header) + body
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def load_config(path: str | Path) -> TrainConfig:
    """Read an exported YAML back (what `retrain --config` does)."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the config ({exc})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of TrainConfig fields")
    return TrainConfig.from_dict(values, source=str(path)).validate()


def verified_note(experiment_dir: Path, config: dict) -> str:
    """What export says: whether this config was verified, and against what."""
    path = Path(experiment_dir) / VERIFY_FILE
    if not path.is_file():
        return "not verified (run `run_search.py verify` to retrain it and the seed recipe on several seeds)"
    try:
        result = json.loads(path.read_text())
        c = result["comparison"]["macro_f1"]
        same = {k: v for k, v in result["winner"]["config"].items() if k != "seed"} == \
               {k: v for k, v in config.items() if k != "seed"}
    except (OSError, ValueError, KeyError, TypeError):
        return f"not verified ({path} is unreadable)"
    if not same:
        return f"not verified ({path} verified another config)"
    verdict = "beyond seed noise" if c["beyond_noise"] else "within seed noise"
    return (f"verified on {len(result['seeds'])} seeds against the seed recipe (trial "
            f"{result['baseline_trial_id']}): macro-F1 {c['winner_mean']:.4f} ± {c['winner_std']:.4f} vs "
            f"{c['baseline_mean']:.4f} ± {c['baseline_std']:.4f}, difference {c['difference']:+.4f} ({verdict})")
