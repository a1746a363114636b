"""Helpers for tests/test_faults.py: real processes, real signals, and reading back what they left.

Also runnable as a training wrapper whose checkpoint write stalls half-way (see `stalling_train`):

    python tests/fault_helpers.py stall-train MARKER EPOCH [python -m trainable flags]
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What fit() reports that must not depend on the clock or on which process ran it.
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "tail_acc", "macro_f1", "lr",
                  "stage", "image_size")


def wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    """Poll until predicate() is true; fail naming `what` (and early if `process` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} while waiting for {what}")
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def subprocess_env(**extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "HF_HUB_OFFLINE": "1"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start(argv: list[str], cwd: Path, env: dict, log_name: str) -> tuple[subprocess.Popen, Path, Path]:
    """Start a command in its own session (a terminal's foreground group); stdout/stderr to files."""
    out, err = cwd / f"{log_name}.out", cwd / f"{log_name}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr, start_new_session=True)
    return process, out, err


def finish(process: subprocess.Popen, timeout: float) -> int:
    """Wait for the process; on timeout kill its whole session (Ray included) and fail."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError(f"{process.args[:3]} did not finish within {timeout:.0f} s") from None


# ----------------------------------------------------------------- reading a Tune experiment back
def tune_trials(experiment: Path) -> list:
    """The experiment's Tune trials as a fresh process reads them back, in creation order."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(experiment)).trials
    return sorted(trials, key=lambda trial: int(trial.experiment_tag.split("_")[0]))


def trial_dir(experiment: Path, trial_id: str) -> Path:
    matches = [p for p in experiment.iterdir() if p.is_dir() and f"_{trial_id}_" in p.name]
    assert len(matches) == 1, f"trial {trial_id}: {matches}"
    return matches[0]


def progress(trial_dir: Path):
    import pandas as pd

    path = trial_dir / "progress.csv"
    if not path.is_file() or not path.read_text().strip():
        return pd.DataFrame()
    return pd.read_csv(path, dtype={"trial_id": str})  # "42957e50" is a trial id, not 4.2957e+54


def metric_rows(trial_dir: Path) -> list[dict]:
    """The trial's per-epoch metrics (METRIC_COLUMNS), in report order."""
    frame = progress(trial_dir)
    return [] if frame.empty else frame[list(METRIC_COLUMNS)].to_dict("records")


# ----------------------------------------------------------------- MLflow
def search_runs(uri: str, search_name: str, experiment: str = "croptune"):
    """(parent run, {trial_id: [child runs]}) of one search in an MLflow store."""
    from tuner import tracking

    client = tracking.client_for(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} in {uri}"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(tracking.SEARCH_TAG) == search_name
               and r.data.tags.get(tracking.ROLE_TAG) == "search"]
    assert len(parents) == 1, f"{len(parents)} parent runs for {search_name}"
    parent = parents[0]
    children: dict[str, list] = {}
    for run in runs:
        if run.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id:
            children.setdefault(run.data.tags.get(tracking.TRIAL_TAG), []).append(run)
    return parent, children


def metric_steps(uri: str, run_id: str, key: str = "epoch") -> list[int]:
    from tuner import tracking

    return sorted(m.step for m in tracking.client_for(uri).get_metric_history(run_id, key))


# ----------------------------------------------------------------- a checkpoint write that stalls
def stalling_train(marker: str, stall_epoch: int, argv: list[str]) -> None:
    """`python -m trainable argv`, except that writing the epoch-`stall_epoch` checkpoint stops
    half-way: half the bytes are written and flushed to the temporary file, `marker` gets this
    pid and the temporary file's name, and the process sleeps until the test kills it."""
    import runpy

    import torch

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == stall_epoch and hasattr(f, "fileno"):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            tmp = os.readlink(f"/proc/self/fd/{f.fileno()}") if os.path.exists("/proc/self/fd") else "?"
            Path(marker + ".tmp").write_text(f"{os.getpid()} {tmp}\n")
            os.replace(marker + ".tmp", marker)
            time.sleep(600)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
    sys.argv = ["python -m trainable", *argv]
    runpy.run_module("trainable", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["stall-train"]:
        stalling_train(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        raise SystemExit(f"usage: {sys.argv[0]} stall-train MARKER EPOCH [flags]")
