"""End-to-end searches on tiny synthetic data (32 px, timm test_resnet, 2 epochs), one Ray session.

- a 3-trial search writes a standard Tune experiment that Tuner.restore reads back in a fresh
  process, and search_summary.json agrees with it; one of its trials raises once (injected by
  tests/fault_injection.py around the production trainable) and is retried from its checkpoint;
- Ctrl-C mid-trial, then --resume of a copy under another --storage-path, completes the search
  without rerunning what ran and without writing to the original (a copy whose trial
  directories were deleted is refused before Ray starts);
- bad input is one line, exit 2, and writes nothing.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
from fault_injection import install
from helpers import EPOCHS, REPO, tiny_flags, wait_for

import search_spaces
from trainable.config import TrainConfig
from trainable.errors import UserError
from tuner.cli import parse_settings
from tuner.experiment import BASE_CONFIG_FILE, META_FILE, SUMMARY_FILE, load_study
from tuner.hooks import SearchHooks
from tuner.search import run_search
from tuner.summary import SUMMARY_KEYS


class RecordingHook(SearchHooks):
    """Records what tuner.hooks promises its hooks (what MLflow tracking builds on)."""

    def __init__(self):
        self.calls, self.context = [], None

    def validate(self, settings):
        self.calls.append("validate")

    def callbacks(self, context):
        self.calls.append("callbacks")
        return []

    def finished(self, context, outcome):
        self.calls.append(outcome)
        self.context = context


def search(argv: list[str], hook: SearchHooks | None = None) -> int:
    """run_search.py's search in this process; only our hook (MLflow is tested on its own)."""
    return run_search(parse_settings(argv), hooks=[hook] if hook else [])


@pytest.fixture(scope="module")
def env(search_data, tmp_path_factory):
    """Tiny data and one small Ray session for the module."""
    base = tmp_path_factory.mktemp("search")
    saved = os.environ.get("CROPTUNE_CACHE_DIR")
    # set before ray.init: Ray's worker processes inherit the driver's environment
    os.environ["CROPTUNE_CACHE_DIR"] = str(base / "cache")
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield {"root": search_data, "storage": base / "results", "tmp": base}
    ray.shutdown()
    if saved is None:
        os.environ.pop("CROPTUNE_CACHE_DIR", None)
    else:
        os.environ["CROPTUNE_CACHE_DIR"] = saved


RESTORE_SCRIPT = """
import json, sys
from ray import tune
from trainable.tune_entry import train_trial
grid = tune.Tuner.restore(sys.argv[1], trainable=train_trial).get_results()
print(json.dumps([{"trial_id": r.metrics.get("trial_id"), "epoch": r.metrics.get("epoch"),
                   "macro_f1": r.metrics.get("macro_f1"), "config": r.config,
                   "error": None if r.error is None else str(r.error)} for r in grid]))
"""


def test_search_writes_a_restorable_experiment_and_retries_a_crashed_trial(env, capsys, monkeypatch, tmp_path):
    install(monkeypatch, {"dir": str(tmp_path), "fail_once_at_epoch": EPOCHS})
    hook = RecordingHook()
    code = search(tiny_flags(env["root"], env["storage"], "e2e") + ["--num-samples", "3"], hook)
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "resources: 2 CPUs" in out and "Best trial" in out
    exp = env["storage"] / "e2e"
    for name in (META_FILE, BASE_CONFIG_FILE, SUMMARY_FILE, "tuner.pkl"):
        assert (exp / name).is_file(), name
    summary = json.loads((exp / SUMMARY_FILE).read_text())
    assert tuple(summary) == SUMMARY_KEYS

    # a fresh process reads the experiment back with the standard Tune API
    proc = subprocess.run([sys.executable, "-c", RESTORE_SCRIPT, str(exp)], capture_output=True, text=True,
                          cwd=REPO, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["trial_id"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert summary["num_trials"] == len(results) == 3
    assert summary["num_failed"] == sum(r["error"] is not None for r in results.values()) == 0
    assert summary["num_stopped_early"] == sum(r["epoch"] < EPOCHS for r in results.values())
    assert summary["epochs_consumed"] == sum(r["epoch"] for r in results.values())
    finished = {t: r for t, r in results.items() if r["epoch"] == EPOCHS}
    best_id = max(finished, key=lambda t: finished[t]["macro_f1"])
    assert summary["best_trial_id"] == best_id
    assert summary["best_value"] == pytest.approx(results[best_id]["macro_f1"])
    base = json.loads((exp / BASE_CONFIG_FILE).read_text())
    assert summary["best_config"] == {**base, **results[best_id]["config"]}
    assert summary["metric"] == "macro_f1" and summary["mode"] == "max" and summary["space"] == "stage_epochs"
    assert summary["storage_path"] == str(env["storage"]) and summary["experiment"] == "e2e"
    assert summary["wall_time_s"] > 0

    assert hook.calls == ["validate", "callbacks", "finished"]
    assert hook.context.summary == summary and len(hook.context.results) == 3
    assert hook.context.data_info["num_train"] > 0 and hook.context.resources.max_concurrent == 2

    # Optuna's view agrees: the seed recipe went first, stopped-early trials are PRUNED
    study = load_study(exp)
    assert len(hook.context.study.trials) == len(study.trials) == 3
    assert study.trials[0].params == search_spaces.seed_defaults(TrainConfig.from_dict(base), "stage_epochs")
    states = [t.state.name for t in study.trials]
    assert states.count("PRUNED") == summary["num_stopped_early"]
    assert states.count("COMPLETE") == 3 - summary["num_stopped_early"]

    # the trial that crashed at epoch 2 was restarted from its epoch-1 checkpoint: epoch 1 ran once
    crashed = (tmp_path / "raised").read_text().strip()
    assert crashed in results and results[crashed]["error"] is None
    trial_dir = next(p for p in exp.iterdir() if p.is_dir() and crashed in p.name)
    epochs = pd.read_csv(trial_dir / "progress.csv")["epoch"].tolist()
    assert epochs == [1, 2], epochs
    assert "injected test fault" in (trial_dir / "error.txt").read_text()
    # every trial kept its checkpoints in the croptune format
    assert list(trial_dir.glob("checkpoint_*/checkpoint.pth"))


@pytest.mark.parametrize("extra, message", [
    (["--space", "nope"], "unknown search space"),
    (["--grace-period", "5"], "--grace-period 5"),
    (["--stage2-epoch", "2", "--stage3-epoch", "1"], "out of order"),
    (["--train-dir", "/nonexistent/train"], "--demo"),
    (["--resume", "never-ran"], "--resume"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(env, tmp_path, extra, message):
    storage = tmp_path / "results"
    flags = tiny_flags(env["root"], storage, "bad") + extra
    if extra[0] == "--resume":
        flags = ["--resume", "never-ran", "--storage-path", str(storage)]
    proc = subprocess.run([sys.executable, str(REPO / "run_search.py"), *flags], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not storage.exists() and not any(tmp_path.iterdir())


def tree(root: Path) -> dict:
    """Every path under root with its size and modification time (what a write would change)."""
    return {p.relative_to(root): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_interrupted_search_resumes_and_completes(env, capsys, monkeypatch, tmp_path):
    storage = env["storage"]
    exp = storage / "resume"
    faults = tmp_path / "faults"
    faults.mkdir()
    # --grace-period = --epochs: no rung, so the first trial is not paused at epoch 1 (which would
    # cut its injected sleep short); it is mid-trial when Ctrl-C comes
    flags = tiny_flags(env["root"], storage, "resume") + ["--num-samples", "2", "--max-concurrent", "1",
                                                          "--grace-period", str(EPOCHS)]

    def epoch_one_recorded():
        return (faults / "paused").is_file() and any(
            len(p.read_text().splitlines()) >= 2 for p in exp.glob("*/progress.csv"))

    def ctrl_c_mid_trial():
        wait_for(epoch_one_recorded, 240, "the first trial's epoch 1")
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; Tune's handler is installed now

    # Tune restores the handler it found after the first SIGINT: make that one harmless, so a
    # mistimed signal fails this test instead of interrupting pytest.
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    killer = threading.Thread(target=ctrl_c_mid_trial, daemon=True)
    killer.start()
    try:
        with monkeypatch.context() as patched:  # the first trial to report epoch 1 sleeps after it
            install(patched, {"dir": str(faults), "pause_once_after_epoch": [1, 120]})
            code = search(flags)
    finally:
        killer.join(timeout=300)
        signal.signal(signal.SIGINT, previous)
    out = capsys.readouterr().out
    assert code == 130, out[-3000:]
    assert f"python run_search.py --resume resume --storage-path {storage}" in out
    assert not (exp / SUMMARY_FILE).exists()
    paused = (faults / "paused").read_text().strip()

    # its trial directories deleted: refused before Ray starts (Tune would fail the trial and exit 0)
    lost = env["tmp"] / "lost"
    shutil.copytree(exp, lost / "resume")
    for trial in (lost / "resume").glob("train_trial_*"):
        shutil.rmtree(trial)
    before = tree(lost)
    with pytest.raises(UserError, match=rf"--resume resume: the checkpoints of trial\(s\) {paused} are gone"):
        search(["--resume", "resume", "--storage-path", str(lost)])
    assert tree(lost) == before

    # resumed from a copy under another --storage-path: everything it writes goes there, the
    # original stays as it was (Tune wrote the searcher's new trials into the original)
    original, storage = tree(exp), env["tmp"] / "moved"
    shutil.copytree(exp, storage / "resume")
    exp = storage / "resume"
    capsys.readouterr()
    hook = RecordingHook()
    assert search(["--resume", "resume", "--storage-path", str(storage)], hook) == 0
    assert tree(env["storage"] / "resume") == original
    assert len(list(exp.glob("train_trial_*"))) == 2
    assert hook.calls == ["validate", "callbacks", "finished"]
    assert len(hook.context.searcher.study.trials) == 2  # hooks see the study on resume too
    assert "Resuming" in capsys.readouterr().out
    summary = json.loads((exp / SUMMARY_FILE).read_text())
    assert summary["num_trials"] == 2 and summary["num_failed"] == 0
    # the interrupted trial continued from its epoch-1 checkpoint instead of starting over
    trial_dir = next(p for p in exp.iterdir() if p.is_dir() and paused in p.name)
    assert pd.read_csv(trial_dir / "progress.csv")["epoch"].tolist() == [1, 2]
    # the Optuna study survived the interruption: both trials in one history, both finished
    study = load_study(exp)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    meta = json.loads((exp / META_FILE).read_text())
    assert [s["outcome"] for s in meta["sessions"]] == ["interrupted", "finished"]
    assert summary["wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in meta["sessions"]), abs=0.01)


def test_trials_that_share_their_first_epochs_start_from_an_earlier_trials_checkpoint(env, capsys):
    """Prefix sharing (trainable.train.prefix), one trial at a time so that every earlier prefix is stored (the
    focal space: its knobs act only from tail_focal_epoch, so trials share the epochs before it):
    a forked trial reports the epochs it shares exactly as its donor did, then trains on."""
    flags = tiny_flags(env["root"], env["storage"], "shared") + [
        "--num-samples", "4", "--max-concurrent", "1", "--epochs", "3", "--grace-period", "2", "--space", "focal"]
    assert search(flags) == 0, capsys.readouterr().out[-3000:]
    exp = env["storage"] / "shared"
    summary = json.loads((exp / SUMMARY_FILE).read_text())
    rows = {p.name: [json.loads(line) for line in (p / "result.json").read_text().splitlines()]
            for p in exp.glob("train_trial_*")}
    forked = {name: r[-1]["prefix_epochs"] for name, r in rows.items() if r[-1].get("prefix_epochs")}
    sharing = summary["prefix_sharing"]
    assert sharing["enabled"] and sharing["trials_forked"] == len(forked) >= 1
    assert sharing["epochs_shared"] == sum(forked.values())
    assert summary["epochs_trained"] == summary["epochs_consumed"] - sharing["epochs_shared"]
    assert all(1 <= k <= 2 for k in forked.values())  # never past the first rung
    keys = ("epoch", "macro_f1", "val_loss", "train_loss", "lr", "stage", "train_time_s")
    for name, k in forked.items():
        replayed = [{key: row[key] for key in keys} for row in rows[name][:k]]
        donors = [other for other, r in rows.items() if other != name
                  and [{key: row[key] for key in keys} for row in r[:k]] == replayed]
        assert donors, f"{name}: its first {k} reports match no other trial's"
    assert not (exp / "prefixes").exists()  # the store goes when the search finishes
    out = capsys.readouterr().out
    assert f"Prefix sharing: {len(forked)} trials started from an earlier trial's checkpoint" in out
