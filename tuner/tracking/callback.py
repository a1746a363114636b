"""One nested MLflow child run per Tune trial, logged from the driver.

Trials need no MLflow access, and a trial that restarts (FailureConfig) or resumes after a
driver restart (`--resume`) continues the same run: runs are found again by their `trial_id`
tag under the parent run. End states:

    FINISHED  the trial ran all its epochs                       stopped_early=false
    KILLED    ASHA (or a stopper) ended it before its last epoch  stopped_early=true
    FAILED    it raised after its retries                         diverged=true for a DivergedError
    KILLED    the search ended (Ctrl-C, time budget) meanwhile    interrupted=true (reopened on resume)

While the scheduler holds a trial at a rung (PAUSED, its checkpoint saved, no process) its run
is SCHEDULED with paused=true, and RUNNING again when the trial resumes.
"""

from __future__ import annotations

import functools
import math
import re
import sys
import time
from numbers import Number
from pathlib import Path

from ray.tune import Callback

from trainable.config import field_names
from tuner.tracking.runs import PARENT_TAG, ROLE_TAG, TRIAL_TAG, find_trial_run, log_params
from tuner.tracking.store import client_for

DIVERGED = re.compile(r"DivergedError|TrialDiverged|\bdiverged:")
# Ray's bookkeeping in every result: not training metrics.
RAY_KEYS = frozenset({
    "config", "date", "done", "experiment_id", "experiment_tag", "hostname", "iterations_since_restore",
    "node_ip", "pid", "should_checkpoint", "time_since_restore", "timestamp", "trial_id",
    "training_iteration", "checkpoint_dir_name", "time_this_iter_s", "timesteps_total",
    "episodes_total", "timesteps_since_restore",
})


def _never_fatal(hook):
    """A tracking failure (server down, disk full) warns once per kind and the search goes on:
    hours of training are worth more than a complete MLflow record. strict=True re-raises."""

    @functools.wraps(hook)
    def wrapper(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except Exception as exc:
            if self.strict:
                raise
            kind = type(exc).__name__
            if kind not in self._warned:
                self._warned.add(kind)
                print(f"warning: MLflow logging failed in {hook.__name__} ({kind}: "
                      f"{_last_line(str(exc))[:200]}); the search goes on", file=sys.stderr, flush=True)
        return None

    return wrapper


class MlflowTrialCallback(Callback):
    """Log every trial of a Tune run as a child of `parent_run_id`.

    base_config: the base TrainConfig as a dict. With it each child run gets the trial's full
    resolved TrainConfig as params (base + the trial's overrides) and a trial counts as
    stopped early when its last epoch is below its `epochs`. Without it the trial config
    itself is logged and any scheduler stop counts as early.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 base_config: dict | None = None, step_key: str = "epoch", strict: bool = False):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.base_config = dict(base_config) if base_config else None
        self.step_key = step_key
        self.strict = strict
        self._client = None
        self._runs: dict[str, str] = {}        # trial_id -> run_id
        self._last_step: dict[str, int] = {}   # trial_id -> last logged step
        self._stop_requested: set[str] = set()  # trial ids whose last result carried done=True
        self._active: set[str] = set()          # trial ids whose run this driver has (re)opened
        self._paused: set[str] = set()          # trial ids whose run is marked paused (SCHEDULED)
        self._warned: set[str] = set()

    # Tune pickles RunConfig (callbacks included) into the experiment; a client is not state.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    @property
    def client(self):
        if self._client is None:
            self._client = client_for(self.tracking_uri)
        return self._client

    def run_id(self, trial_id: str) -> str | None:
        """The MLflow run of a trial (e.g. to add the best trial's artifacts)."""
        return self._runs.get(trial_id) or self._find_run(trial_id)

    # ----------------------------------------------------------------- Tune hooks
    @_never_fatal
    def on_trial_start(self, iteration, trials, trial, **info):
        self._open(trial)

    @_never_fatal
    def on_trial_restore(self, iteration, trials, trial, **info):
        self._open(trial)

    @_never_fatal
    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._open(trial)
        step = int(result.get(self.step_key, result.get("training_iteration", 0)))
        if result.get("done"):
            self._stop_requested.add(trial.trial_id)
        if step <= self._last_step.get(trial.trial_id, -1):
            return  # a restarted trial re-reporting an epoch it had already logged
        self._last_step[trial.trial_id] = step
        metrics = _numeric(result)
        if metrics:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(key, value, now, step) for key, value in metrics.items()]
            for start in range(0, len(batch), 1000):
                self.client.log_batch(run_id, metrics=batch[start:start + 1000])

    @_never_fatal
    def on_trial_recover(self, iteration, trials, trial, **info):
        run_id = self._open(trial)
        self.client.set_tag(run_id, "num_failures", str(trial.num_failures))

    @_never_fatal
    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._open(trial)
        early = self._stopped_early(trial)
        self.client.set_tag(run_id, "stopped_early", str(early).lower())
        self._close(trial, "KILLED" if early else "FINISHED")

    @_never_fatal
    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._open(trial)
        error, diverged = _error_info(trial)
        self.client.set_tag(run_id, "diverged", str(diverged).lower())
        if error:
            self.client.set_tag(run_id, "error", _last_line(error)[:500])
        self.client.set_tag(run_id, "num_failures", str(trial.num_failures))
        self._close(trial, "FAILED")

    @_never_fatal
    def on_step_end(self, iteration, trials, **info):
        # Tune has no pause hook: a trial the scheduler paused shows up here, once per step.
        for trial in trials:
            if trial.status == "PAUSED" and trial.trial_id in self._active:
                # moved first: with the store down, a pause is tried once, not at every step
                self._active.discard(trial.trial_id)  # the next hook for it reopens the run
                self._paused.add(trial.trial_id)
                run_id = self._runs[trial.trial_id]
                self.client.set_tag(run_id, "paused", "true")
                self.client.update_run(run_id, status="SCHEDULED")

    def on_experiment_end(self, trials, **info):
        # Trials still open here were stopped with the search (Ctrl-C, time budget, driver error),
        # paused ones included: all are reopened on resume. One at a time: a failure for one
        # trial must not leave the others open.
        for trial in trials:
            if trial.trial_id in self._active or trial.trial_id in self._paused:
                self._close_interrupted(trial)

    @_never_fatal
    def _close_interrupted(self, trial) -> None:
        run_id = self._runs[trial.trial_id]
        if trial.trial_id in self._paused:
            self._paused.discard(trial.trial_id)
            self._active.add(trial.trial_id)
            if "paused" in self.client.get_run(run_id).data.tags:
                self.client.delete_tag(run_id, "paused")
        self.client.set_tag(run_id, "interrupted", "true")
        self._close(trial, "FAILED" if trial.status == "ERROR" else "KILLED")

    def get_state(self):
        return {"runs": dict(self._runs), "last_step": dict(self._last_step)}

    def set_state(self, state):
        self._runs.update(state.get("runs", {}))
        self._last_step.update(state.get("last_step", {}))

    # ----------------------------------------------------------------- runs
    def _open(self, trial) -> str:
        trial_id = trial.trial_id
        if trial_id in self._active:
            return self._runs[trial_id]
        run_id = self._runs.get(trial_id) or self._find_run(trial_id)
        if run_id is None:
            run_id = self._create_run(trial)
        else:  # continuing after a restart or a resume
            run = self.client.get_run(run_id)
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            for tag in ("interrupted", "paused"):
                if tag in run.data.tags:
                    self.client.delete_tag(run_id, tag)
            logged = _last_logged_step(self.client, run)
            self._last_step[trial_id] = max(self._last_step.get(trial_id, -1), logged)
        self._runs[trial_id] = run_id
        self._active.add(trial_id)
        self._paused.discard(trial_id)
        return run_id

    def _find_run(self, trial_id: str) -> str | None:
        return find_trial_run(self.client, self.experiment_id, self.parent_run_id, trial_id)

    def _create_run(self, trial) -> str:
        config = dict(trial.config or {})
        tags = {PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial.trial_id, ROLE_TAG: "trial"}
        run = self.client.create_run(self.experiment_id, run_name=str(trial), tags=tags)
        log_params(self.client, run.info.run_id, self._params(config))
        return run.info.run_id

    def _params(self, config: dict) -> dict:
        """The resolved TrainConfig (base + the trial's overrides) and, as `search.*`, the
        searcher's own params (e.g. the schedule fractions behind the epochs)."""
        if self.base_config is None:
            return _flatten(config)
        fields = set(field_names())
        resolved = {**self.base_config, **{k: v for k, v in config.items() if k in fields}}
        searched = {f"search.{k}": v for k, v in _flatten(config).items() if k not in fields}
        return {**resolved, **searched}

    def _planned_epochs(self, trial) -> int | None:
        config = trial.config or {}
        if "epochs" in config:
            return int(config["epochs"])
        if self.base_config and "epochs" in self.base_config:
            return int(self.base_config["epochs"])
        return None

    def _stopped_early(self, trial) -> bool:
        last = (trial.last_result or {}).get(self.step_key)
        planned = self._planned_epochs(trial)
        if planned is not None and last is not None:
            return int(last) < planned
        return trial.trial_id in self._stop_requested

    def _close(self, trial, status: str) -> None:
        self.client.set_terminated(self._runs[trial.trial_id], status=status)
        self._active.discard(trial.trial_id)


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out


def _numeric(result: dict) -> dict[str, float]:
    metrics = {}
    for key, value in _flatten({k: v for k, v in result.items() if k not in RAY_KEYS}).items():
        if isinstance(value, Number) and not isinstance(value, bool):
            value = float(value)
            if math.isfinite(value):  # NaN/inf: the diverged tag tells it; MLflow's REST may not
                metrics[key] = value
    return metrics


def _last_logged_step(client, run) -> int:
    if not run.data.metrics:
        return -1
    key = "epoch" if "epoch" in run.data.metrics else next(iter(run.data.metrics))
    history = client.get_metric_history(run.info.run_id, key)
    return max((m.step for m in history), default=-1)


def _error_info(trial) -> tuple[str, bool]:
    """(the trial's error text, whether it diverged).

    Diverged: the trainable raised DivergedError, or tune_entry's TrialDiverged ("diverged: ...").
    Read from the trial's local error files (written before on_trial_error is called); the
    storage copies Trial.get_error() reads are synced later.
    """
    try:
        import cloudpickle

        text, names = "", set()
        if trial.pickled_error_file and Path(trial.pickled_error_file).is_file():
            error = cloudpickle.loads(Path(trial.pickled_error_file).read_bytes())
            names = {type(e).__name__ for e in (error, getattr(error, "cause", None)) if e is not None}
            text = str(error)
        if trial.error_file and Path(trial.error_file).is_file():
            text = Path(trial.error_file).read_text(errors="replace") or text
        text = text or trial.get_error() or ""
    except Exception:  # the error files are best effort; never break the search over a tag
        return "", False
    diverged = any("Diverged" in name for name in names) or bool(DIVERGED.search(text))
    return text, diverged


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
