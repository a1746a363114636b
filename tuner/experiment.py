"""The experiment directory: what croptune adds to a standard Tune experiment, and reading it back.

    <storage_path>/<name>/                 a standard Tune experiment (Tuner.restore reads it)
        croptune_search.json               the search's settings + base config (written at start)
        base_config.json                   the base TrainConfig alone (written at start)
        search_summary.json                the end-of-search report (tuner.summary)
        <trial dirs>/checkpoint_*/checkpoint.pth

`croptune_search.json` is what `--resume NAME` and `export` read: a trial's config holds only
the searcher's overrides; `resolved_config(meta, overrides)` gives the full TrainConfig.
No Ray import here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from trainable._compat import optuna_study_from_state
from trainable.config import TrainConfig
from trainable.errors import UserError

META_FILE = "croptune_search.json"
BASE_CONFIG_FILE = "base_config.json"   # the base TrainConfig alone (what tuner.export reads)
SUMMARY_FILE = "search_summary.json"
TUNE_STATE_GLOB = "experiment_state-*.json"


def experiment_dir(storage_path: str, name: str) -> Path:
    return Path(storage_path) / name


def is_tune_experiment(path: Path) -> bool:
    return path.is_dir() and any(path.glob(TUNE_STATE_GLOB))


def check_new_experiment(storage_path: str, name: str) -> None:
    path = experiment_dir(storage_path, name)
    if path.exists():
        hint = f"continue it with --resume {name} or choose" if (path / META_FILE).is_file() else "choose"
        raise UserError(f"experiment {path} already exists: {hint} another --name")


def claim_new_experiment(storage_path: str, name: str) -> Path:
    """Create the experiment directory, failing if it exists: of two searches that passed
    check_new_experiment at once, only one gets it (mkdir is atomic), the other stops."""
    path = experiment_dir(storage_path, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        raise UserError(f"experiment {path} was created by another search meanwhile; "
                        f"choose another --name (or leave it out for a fresh default)") from None
    return path


def release_claim(path: Path) -> None:
    """Remove a claimed experiment directory that is still empty (the search stopped before writing)."""
    try:
        path.rmdir()
    except OSError:  # not empty (Tune or the meta wrote into it) or already gone: keep it
        pass


def read_meta(storage_path: str, name: str) -> dict:
    """The settings a search was started with; UserError when NAME is not a croptune search."""
    path = experiment_dir(storage_path, name)
    if not path.is_dir():
        known = list_experiments(storage_path)
        hint = f" (found: {', '.join(known[:8])})" if known else ""
        raise UserError(f"--resume {name}: no experiment {path}{hint}; check the name and --storage-path")
    meta_file = path / META_FILE
    if not meta_file.is_file() or not is_tune_experiment(path):
        raise UserError(f"--resume {name}: {path} is not a croptune search (no {META_FILE} or Tune state); "
                        f"start a new search instead")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{meta_file}: unreadable ({exc})") from None
    return meta


def lost_checkpoints(storage_path: str, name: str) -> list[str]:
    """Trials Tune would continue from a checkpoint that is no longer there (trial directory
    deleted or emptied): Tune then fails them with "Could not recover from checkpoint".
    Read from Tune's newest experiment_state JSON (its JSON fields only, nothing unpickled)."""
    path = experiment_dir(storage_path, name)
    states = sorted(path.glob(TUNE_STATE_GLOB))
    if not states:
        return []
    try:
        trial_data = json.loads(states[-1].read_text()).get("trial_data", [])
        lost = []
        for trial_json, runtime_json in trial_data:
            trial, runtime = json.loads(trial_json), json.loads(runtime_json)
            reported = (runtime.get("last_result") or {}).get("training_iteration")
            if trial.get("status") in ("TERMINATED", "ERROR") or not reported:
                continue  # finished, or never reported (restarts from its config, needs no checkpoint)
            if not any((path / trial["relative_logdir"]).glob("checkpoint_*")):
                lost.append(trial["trial_id"])
    except (OSError, ValueError, TypeError, KeyError):  # a layout this reader does not know: let Tune decide
        return []
    return lost


def list_experiments(storage_path: str) -> list[str]:
    root = Path(storage_path)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / META_FILE).is_file())


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
    os.replace(tmp, path)


def write_meta(settings, extra: dict | None = None) -> Path:
    """Record the search's settings in its experiment directory (before trials start)."""
    path = experiment_dir(settings.storage_path, settings.name) / META_FILE
    previous = json.loads(path.read_text()) if path.is_file() else {}
    meta = {
        "space": settings.space,
        "metric": settings.metric,
        "mode": settings.mode,
        "num_samples": settings.num_samples,
        "grace_period": settings.grace_period,
        "reduction_factor": settings.reduction_factor,
        "max_failures": settings.max_failures,
        "keep_checkpoints": settings.keep_checkpoints,
        "max_concurrent": settings.max_concurrent,
        "time_budget_s": settings.time_budget_s,
        "cpus_per_trial": settings.cpus_per_trial,
        "gpus_per_trial": settings.gpus_per_trial,
        "seed": settings.seed,
        "base_config": settings.base.to_dict(),
        "sessions": previous.get("sessions", []),
        **(extra or {}),
    }
    write_json_atomic(path, meta)
    write_json_atomic(path.parent / BASE_CONFIG_FILE, settings.base.to_dict())
    return path


def record_session(storage_path: str, name: str, wall_time_s: float, outcome: str) -> float:
    """Append this driver session's wall time; return the search's total so far."""
    path = experiment_dir(storage_path, name) / META_FILE
    if not path.is_file():
        return wall_time_s
    meta = json.loads(path.read_text())
    meta.setdefault("sessions", []).append({"wall_time_s": round(wall_time_s, 3), "outcome": outcome})
    write_json_atomic(path, meta)
    return sum(s["wall_time_s"] for s in meta["sessions"])


def resolved_config(meta: dict, overrides: dict) -> TrainConfig:
    """A trial's full TrainConfig: the search's base config with the trial's overrides."""
    base = TrainConfig.from_dict(meta["base_config"], source="experiment base config")
    return base.replace(**overrides)


def load_study(experiment_path: str | Path):
    """The search's Optuna study as Tune last saved it (trials PRUNED / COMPLETE / FAIL).

    Read from the newest `searcher-state-<session start>.pkl` (one per driver session); like
    Tuner.restore this unpickles, so only read experiments you trust. None if absent.
    """
    import pickle

    states = sorted(Path(experiment_path).glob("searcher-state-*.pkl"), key=lambda p: p.name)
    if not states:
        return None
    with open(states[-1], "rb") as handle:
        return optuna_study_from_state(pickle.load(handle))

