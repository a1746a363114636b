"""Processes interrupted from outside, with real processes and real signals, on tiny synthetic data
(32 px, test_resnet, 2 epochs):

- SIGTERM, then Ctrl-C (SIGINT to the terminal's process group), to a search: a clean stop each
  time, and the printed `--resume` command completes the search
                                     test_sigterm_then_ctrl_c_then_resume_completes_the_search
  (the in-process Ctrl-C + resume of tests/test_search_e2e.py checks the Tune side in more detail)
- `python -m trainable` killed while writing a checkpoint keeps the previous one loadable
                                     test_kill_mid_checkpoint_write_keeps_the_last_good_one

The search's trials pause through tests/fault_injection.py (its `search` command runs
run_search.py with the fault wrapped around the production trainable).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
from pathlib import Path

import pytest
from fault_injection import faulty_search_argv
from helpers import (
    EPOCHS,
    REPO,
    finish,
    json_file,
    layout_flags,
    metric_rows,
    metric_steps,
    progress,
    search_runs,
    start,
    subprocess_env,
    tiny_flags,
    trial_dir,
    tune_trials,
    wait_for,
)

import search_spaces
from trainable.config import TrainConfig
from trainable.errors import UserError
from trainable.train.checkpoint import load_checkpoint
from trainable.tune_entry import CHECKPOINT_FILE
from tuner.experiment import BASE_CONFIG_FILE, META_FILE, SUMMARY_FILE, load_study

RUN_SEARCH = str(REPO / "run_search.py")
LINUX_ONLY = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def paused_trial(faults: Path, experiment: Path) -> str | None:
    """The trial the pause fault holds, once its epoch-1 report is on disk."""
    marker = faults / "paused"
    if not marker.is_file() or not marker.read_text().strip():
        return None
    trial_id = marker.read_text().strip()
    with contextlib.suppress(AssertionError, FileNotFoundError):
        if len(progress(trial_dir(experiment, trial_id))) >= 1:
            return trial_id
    return None


def resume_args(stdout: str) -> list[str]:
    """The arguments of the `python run_search.py --resume ...` command the interrupted search printed."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip().startswith("python run_search.py --resume")]
    assert len(lines) == 1, stdout[-3000:]
    return shlex.split(lines[0])[2:]


def check_clean_stop(proc, out: Path, err: Path, storage: Path, uri: str, paused: str) -> list[str]:
    assert finish(proc, 300) == 130, err.read_text()[-3000:]
    stdout = out.read_text()
    args = resume_args(stdout)
    assert args == ["--resume", "sig", "--storage-path", str(storage), "--mlflow-uri", uri]
    experiment = storage / "sig"
    assert not (experiment / SUMMARY_FILE).exists()
    # the interrupted trial is checkpointed: its epoch-1 checkpoint is whole
    (saved,) = sorted(trial_dir(experiment, paused).glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
    assert load_checkpoint(saved)["epoch"] == 1
    parent, children = search_runs(uri, "sig")
    assert parent.info.status == "KILLED"
    (child,) = children[paused]
    assert child.info.status == "KILLED" and child.data.tags.get("interrupted") == "true"
    return args


def test_sigterm_then_ctrl_c_then_resume_completes_the_search(search_data, tmp_path):
    storage, faults = tmp_path / "results", tmp_path / "faults"
    faults.mkdir()
    experiment, uri = storage / "sig", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = subprocess_env(CROPTUNE_CACHE_DIR=tmp_path / "cache")
    pause = {"dir": str(faults), "pause_once_after_epoch": [1, 300]}  # the first trial to report epoch 1 waits

    # session 1: `kill PID` (SIGTERM) while the first trial is between its epochs 1 and 2
    # --grace-period = --epochs: no rung pauses the first trial at epoch 1 (cutting its wait short);
    # --no-share-prefix: the second trial trains its own epoch 1 (a forked one replays it, no pause)
    argv = faulty_search_argv(pause, *tiny_flags(search_data, storage, "sig"), "--num-samples", "2",
                              "--max-concurrent", "1", "--grace-period", str(EPOCHS), "--no-share-prefix",
                              "--mlflow-uri", uri)
    proc, out, err = start(argv, tmp_path, env, "session1")
    wait_for(lambda: paused_trial(faults, experiment), 300, "the first trial's epoch 1", proc)
    first = paused_trial(faults, experiment)
    proc.send_signal(signal.SIGTERM)
    args = check_clean_stop(proc, out, err, storage, uri, first)
    parent_id = search_runs(uri, "sig")[0].info.run_id

    # session 2, the printed command: the first trial finishes from its checkpoint, the second
    # (proposed by the restored searcher) reports epoch 1 and pauses: Ctrl-C, i.e. SIGINT to
    # the terminal's foreground process group
    (faults / "paused").unlink()
    proc, out, err = start(faulty_search_argv(pause, *args), tmp_path, env, "session2")
    wait_for(lambda: paused_trial(faults, experiment), 300, "the second trial's epoch 1", proc)
    second = paused_trial(faults, experiment)
    assert second != first
    os.killpg(proc.pid, signal.SIGINT)
    assert check_clean_stop(proc, out, err, storage, uri, second) == args
    assert [row["epoch"] for row in metric_rows(trial_dir(experiment, first))] == [1, 2]

    # session 3: the printed command as it is, no fault: runs to the end
    proc, out, err = start([sys.executable, RUN_SEARCH, *args], tmp_path, env, "session3")
    assert finish(proc, 300) == 0, err.read_text()[-3000:]
    assert "Resuming" in out.read_text()
    summary = json_file(experiment / SUMMARY_FILE)
    assert summary["num_trials"] == 2 and summary["num_failed"] == 0
    trials = tune_trials(experiment)
    assert [t.trial_id for t in trials] == [first, second]
    for trial in trials:  # each epoch ran once: nothing finished was rerun, nothing restarted from 0
        assert [row["epoch"] for row in metric_rows(trial_dir(experiment, trial.trial_id))] == [1, 2]
    # one Optuna history across the three sessions: the seed recipe first, then the proposal
    # the restored searcher made in session 2
    study = load_study(experiment)
    assert [t.number for t in study.trials] == [0, 1]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    base = TrainConfig.from_dict(json_file(experiment / BASE_CONFIG_FILE))
    assert study.trials[0].params == search_spaces.seed_defaults(base, "stage_epochs")
    for ot_trial, tune_trial in zip(study.trials, trials, strict=True):
        overrides = search_spaces.overrides_from_params("stage_epochs", ot_trial.params, base)
        assert {k: tune_trial.config[k] for k in overrides} == overrides
    assert [s["outcome"] for s in json_file(experiment / META_FILE)["sessions"]] == \
        ["interrupted", "interrupted", "finished"]
    # MLflow: the same parent run, reopened and finished; one child run per trial, no epoch twice
    parent, children = search_runs(uri, "sig")
    assert parent.info.run_id == parent_id and parent.info.status == "FINISHED"
    assert sorted(children) == sorted([first, second])
    for runs in children.values():
        (run,) = runs
        assert run.info.status == "FINISHED"
        assert metric_steps(uri, run.info.run_id) == [1, 2]


def train_flags(root: Path, save_dir: Path) -> list[str]:
    return layout_flags(root) + ["--backbone", "test_resnet", "--no-pretrained", "--image-size", "32",
                    "--progressive-image-size", "32", "--epochs", "2", "--num-workers", "0", "--device", "cpu",
                    "--save-dir", str(save_dir)]


@LINUX_ONLY
def test_kill_mid_checkpoint_write_keeps_the_last_good_one(search_data, tmp_path, capsys):
    """`python -m trainable` SIGKILLed half-way through writing epoch 2's last.pth (the bytes are on
    disk, in the temporary file): last.pth is still epoch 1's, whole, and --resume continues from it."""
    save, marker = tmp_path / "save", tmp_path / "stalled"
    env = subprocess_env(CROPTUNE_CACHE_DIR=tmp_path / "cache")
    argv = [sys.executable, str(REPO / "tests" / "fault_injection.py"), "stall-train", str(marker), "2",
            *train_flags(search_data, save)]
    proc, out, err = start(argv, tmp_path, env, "train")
    wait_for(marker.is_file, 300, "the epoch-2 checkpoint write to stall", proc)
    pid, partial = marker.read_text().split()
    assert int(pid) == proc.pid and Path(partial).parent == save and Path(partial).stat().st_size > 0
    os.kill(proc.pid, signal.SIGKILL)
    assert finish(proc, 60) == -signal.SIGKILL
    assert "Epoch 2/2" in out.read_text()  # it was killed after training epoch 2, while saving it

    assert load_checkpoint(save / "last.pth")["epoch"] == 1  # the previous checkpoint, whole
    assert Path(partial).is_file()  # the interrupted write: never renamed over last.pth
    with pytest.raises(UserError, match="not a croptune checkpoint"):
        load_checkpoint(partial)

    # `python -m trainable --resume save/last.pth`, in this process (torch is already imported here)
    from trainable.cli import main as train_main
    from trainable.errors import run_cli

    capsys.readouterr()
    assert run_cli(train_main, ["--resume", str(save / "last.pth")]) == 0
    resumed = capsys.readouterr().out
    assert "Epoch 2/2" in resumed and "Epoch 1/2" not in resumed
    assert load_checkpoint(save / "last.pth")["epoch"] == 2
    assert not Path(partial).exists()  # the next save of last.pth removed the dead write's leftover
