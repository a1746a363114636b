"""The one place croptune touches library internals: torch, Ray Tune, Ray's OptunaSearch, ssl, argparse.

Each function names the internal it uses and why no public API does the job; tests/test_compat.py
pins every internal, so an upgrade fails there first and not in a search. Checked against torch
2.14, Ray 2.60, Optuna 5.1. It sits in trainable/, the package everything imports, so that
trainable never imports tuner. Library imports stay inside the functions: importing this is free.
"""

from __future__ import annotations

import argparse
import copy


# ---------------------------------------------------------------------------------- torch
def storage_use_count(tensor) -> int | None:
    """References to a tensor's storage from any tensor, view or autograd save; None without the API.
    torch exposes no public count, and a reused buffer must have no reader left."""
    import torch

    count = getattr(torch._C, "_storage_Use_Count", None)
    return None if count is None else int(count(tensor.untyped_storage()._cdata))


# ---------------------------------------------------------------------------------- Ray
def recorded_ray_address() -> str | None:
    """The address `ray start` recorded on this machine (or RAY_ADDRESS), as ray.init("auto") reads it;
    None when nothing is recorded. Ray has no public reader of it."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        return canonicalize_bootstrap_address("auto")
    except Exception:  # noqa: BLE001 - nothing recorded: ray.init says so at once
        return None


def restored_search(search_alg, storage_path: str, name: str):
    """The restored searcher, wrapped so that the trials it adds are written to `storage_path/name`.

    Tune 2.60 moves restored trials to where the experiment is now (a copied or moved experiment) but
    restores the search generator's Experiment, the template of every new trial, with the storage it
    was pickled with, so new trials went to the old location. Uses SearchGenerator._experiment and
    ray.train._internal.storage.get_fs_and_path."""
    from ray.train._internal.storage import get_fs_and_path
    from ray.tune.search import SearchGenerator

    class StoragePinnedSearch(SearchGenerator):
        def set_state(self, state: dict) -> None:
            super().set_state(state)
            storage = getattr(self._experiment, "storage", None)
            if storage is None:
                return
            moved = copy.copy(storage)
            moved.storage_filesystem, moved.storage_fs_path = get_fs_and_path(storage_path, None)
            moved.experiment_dir_name = name
            self._experiment.storage = self._experiment.spec["storage"] = moved

    searcher = search_alg.searcher if isinstance(search_alg, SearchGenerator) else search_alg
    return StoragePinnedSearch(searcher)


def restored_tuner_config(tuner, callbacks: list | None = None):
    """A restored Tuner's TuneConfig (to re-wrap its searcher), after giving it fresh `callbacks`:
    Tuner.restore takes no callbacks and keeps the pickled ones (Tuner._local_tuner's fields)."""
    local = tuner._local_tuner
    if callbacks:
        local._run_config.callbacks = callbacks
    return local._tune_config


def live_trials(results, experiment_path: str) -> list:
    """The Trial objects of a finished Tuner.fit(): ResultGrid keeps them in _experiment_analysis
    (with error files and last results); read back from disk when it does not."""
    analysis = getattr(results, "_experiment_analysis", None)
    if analysis is None:
        from ray.tune import ExperimentAnalysis

        analysis = ExperimentAnalysis(experiment_path)
    return analysis.trials


def mark_for_experiment_state(tune_controller, trial) -> None:
    """Ray 2.60: stopping a trial without an actor (a PAUSED one) sets it TERMINATED but does not mark
    it for the experiment-state snapshot (TuneController._schedule_trial_stop marks only trials with an
    actor), so a restore would take it for unfinished. Mark it as the controller does for the others
    (TuneController._mark_trial_to_checkpoint; skipped if a future Ray drops it)."""
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    mark = getattr(controller, "_mark_trial_to_checkpoint", None)
    if mark is not None:
        mark(trial)


# ---------------------------------------------------------------------------------- Ray's OptunaSearch
OPTUNA_STUDY_ATTR = "_ot_study"  # where ray.tune.search.optuna.OptunaSearch keeps its study


def optuna_study(searcher):
    """The optuna.Study inside a Ray OptunaSearch (no public accessor), or None."""
    return getattr(searcher, OPTUNA_STUDY_ATTR, None)


def optuna_study_from_state(state: dict):
    """The study in an OptunaSearch's saved state (searcher-state-*.pkl holds its __dict__)."""
    return state.get(OPTUNA_STUDY_ATTR)


# ---------------------------------------------------------------------------------- ssl
def unverified_ssl_context():
    """An SSL context that skips certificate checks, for MLFLOW_TRACKING_INSECURE_TLS=true as MLflow's own
    client honours it; the stdlib offers it only as ssl._create_unverified_context."""
    import ssl

    return ssl._create_unverified_context()


# ---------------------------------------------------------------------------------- argparse
def move_group_last(parser: argparse.ArgumentParser, title_prefix: str) -> None:
    """Show the argument group whose title starts with `title_prefix` last in --help
    (argparse orders groups by creation; the list is _action_groups)."""
    groups = parser._action_groups
    group = next(g for g in groups if g.title and g.title.startswith(title_prefix))
    groups.remove(group)
    groups.append(group)
