"""Trials that fail inside a search, run in this process on tiny synthetic data (32 px,
test_resnet, 2 epochs), and what the search makes of them:

- a trial's Ray worker SIGKILLed mid-epoch restarts from its last checkpoint, in the same MLflow
  run, and the search completes   test_worker_killed_mid_epoch_restarts_from_its_checkpoint
- a trial whose loss becomes NaN ends as a diverged error; the search goes on
                                   test_diverged_trial_is_marked_and_the_search_goes_on
- every trial failed, or the time budget spent before any report: the reason, exit 1
- the same search twice gives the same per-trial metrics
                                   test_same_search_twice_gives_the_same_trials

The worker is held before it saves epoch 2 by tests/fault_injection.py, wrapped around the
production trainable.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
from fault_injection import install
from helpers import (
    EPOCHS,
    json_file,
    metric_rows,
    metric_steps,
    progress,
    search_in_process,
    search_runs,
    tiny_flags,
    trial_dir,
    tune_trials,
    wait_for,
)

from tuner.experiment import SUMMARY_FILE, load_study

DIVERGING_LR = 1e12  # AdamW with this LR makes the training loss NaN within the first epoch


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory):
    """One small Ray session for the module's searches (its workers decode into the module's cache)."""
    import ray

    saved = os.environ.get("CROPTUNE_CACHE_DIR")
    # before ray.init: workers inherit the environment; the driver decodes into this cache
    os.environ["CROPTUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("ray-env-cache"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("CROPTUNE_CACHE_DIR", None)
    else:
        os.environ["CROPTUNE_CACHE_DIR"] = saved


@pytest.fixture(scope="module")
def twin_searches(search_data, ray_env, tmp_path_factory):
    """The same 2-trial search twice, trials one at a time."""
    runs = []
    for index in range(2):
        storage = tmp_path_factory.mktemp(f"twin{index}") / "results"
        code, out = search_in_process(tiny_flags(search_data, storage, "twin") + [
            "--num-samples", "2", "--max-concurrent", "1", "--seed", "7", "--no-mlflow"])
        assert code == 0, out[-3000:]
        runs.append(storage / "twin")
    return runs


def test_same_search_twice_gives_the_same_trials(twin_searches):
    first, second = ([(t.config, metric_rows(trial_dir(exp, t.trial_id))) for t in tune_trials(exp)]
                     for exp in twin_searches)
    assert len(first) == 2 and all(rows for _, rows in first)
    assert first == second  # same proposals, same metrics epoch by epoch (exactly)
    summaries = [json_file(exp / SUMMARY_FILE) for exp in twin_searches]
    assert summaries[0]["best_value"] == summaries[1]["best_value"]


@pytest.fixture(scope="module")
def faulty_search(search_data, ray_env, tmp_path_factory):
    """One search with both faults: its first trial (the seed point, lr 1e12) diverges; the
    second trial's worker is SIGKILLed once it has trained epoch 2, before that epoch is saved."""
    base = tmp_path_factory.mktemp("faulty")
    storage, faults, uri = base / "results", base / "faults", f"sqlite:///{base / 'mlflow.db'}"
    faults.mkdir()
    space = base / "diverge.yaml"
    space.write_text(f"lr: {{type: categorical, choices: [{DIVERGING_LR:.1e}, 5.0e-4]}}\n")
    killed: dict = {}

    def kill_the_held_worker():
        try:
            wait_for((faults / "held_pid").is_file, 600, "a trial to finish training epoch 2")
            killed.update(pid=int((faults / "held_pid").read_text()), trial=(faults / "held").read_text().strip())
            os.kill(killed["pid"], signal.SIGKILL)
        except BaseException as exc:  # reported by the tests, not lost in the thread
            killed["error"] = exc

    killer = threading.Thread(target=kill_the_held_worker, daemon=True)
    killer.start()
    # --grace-period = --epochs: no rung pause moves the trial to another worker before the kill
    with pytest.MonkeyPatch.context() as monkeypatch:
        install(monkeypatch, {"dir": str(faults), "hold_once_before_report": [2, 300]})
        try:
            code, out = search_in_process(tiny_flags(search_data, storage, "faulty") + [
                "--space", str(space), "--lr", str(DIVERGING_LR), "--num-samples", "2", "--max-concurrent", "1",
                "--seed", "7", "--max-failures", "1", "--grace-period", str(EPOCHS), "--mlflow-uri", uri])
        finally:
            killer.join(timeout=5)
    assert "error" not in killed and "pid" in killed, killed
    assert code == 0, out[-3000:]
    experiment = storage / "faulty"
    return {"experiment": experiment, "uri": uri, "out": out, "killed": killed,
            "trials": {t.trial_id: t for t in tune_trials(experiment)},
            "summary": json_file(experiment / SUMMARY_FILE), "runs": search_runs(uri, "faulty")}


def test_worker_killed_mid_epoch_restarts_from_its_checkpoint(faulty_search, twin_searches):
    experiment, killed = faulty_search["experiment"], faulty_search["killed"]
    trial = faulty_search["trials"][killed["trial"]]
    assert trial.status == "TERMINATED" and trial.num_failures == 1
    rows = progress(trial_dir(experiment, trial.trial_id))
    # epoch 1 once, from the killed worker; epoch 2 once, from a new worker that restored the
    # epoch-1 checkpoint (one iteration since the restore): the lost work is epoch 2's, no more
    assert rows["epoch"].tolist() == [1, 2] and rows["training_iteration"].tolist() == [1, 2]
    assert rows["pid"].tolist()[0] == killed["pid"] != rows["pid"].tolist()[1]
    assert rows["iterations_since_restore"].tolist()[1] == 1
    assert "died" in (trial_dir(experiment, trial.trial_id) / "error.txt").read_text().lower()
    # the restored trial's metrics are exactly those of the same config run without a fault
    # (the first trial of twin_searches is the same seed-recipe config)
    twin = tune_trials(twin_searches[0])[0]
    assert metric_rows(trial_dir(experiment, trial.trial_id)) == metric_rows(trial_dir(twin_searches[0], twin.trial_id))
    # MLflow: the trial's run continued (one run, each epoch logged once, finished)
    parent, children = faulty_search["runs"]
    (run,) = children[trial.trial_id]
    assert run.info.status == "FINISHED" and run.data.tags["num_failures"] == "1"
    assert metric_steps(faulty_search["uri"], run.info.run_id) == [1, 2]
    # every trial accounted for, in Tune, Optuna, MLflow and the summary
    assert faulty_search["summary"]["num_trials"] == len(faulty_search["trials"]) == len(children) == 2
    assert len(load_study(experiment).trials) == 2 and parent.info.status == "FINISHED"


def test_diverged_trial_is_marked_and_the_search_goes_on(faulty_search):
    trials = list(faulty_search["trials"].values())
    diverged, survivor = trials  # creation order: the seed point (lr 1e12) went first
    assert diverged.config["lr"] == DIVERGING_LR and survivor.config["lr"] == 5e-4
    experiment = faulty_search["experiment"]
    # Tune: an error that says diverged; no epoch reported; the retry did not train again
    assert diverged.status == "ERROR"
    error = (trial_dir(experiment, diverged.trial_id) / "error.txt").read_text()
    assert "TrialDiverged: diverged: training loss became nan" in error
    assert progress(trial_dir(experiment, diverged.trial_id)).empty
    # the search went on: the next trial ran all its epochs and is the best
    assert survivor.status == "TERMINATED" and survivor.last_result["epoch"] == EPOCHS
    summary = faulty_search["summary"]
    assert summary["num_failed"] == 1 and summary["best_trial_id"] == survivor.trial_id
    out = faulty_search["out"]
    assert "1 failed (1 diverged)" in out and f"failed trial {diverged.trial_id}: diverged: " in out
    assert [t.state.name for t in load_study(experiment).trials] == ["FAIL", "COMPLETE"]
    # MLflow: the child run failed, tagged diverged
    _, children = faulty_search["runs"]
    (run,) = children[diverged.trial_id]
    assert run.info.status == "FAILED" and run.data.tags["diverged"] == "true"
    assert "diverged" in run.data.tags["error"]


def test_search_where_every_trial_failed_exits_1_without_an_export_hint(search_data, ray_env, tmp_path):
    storage = tmp_path / "results"
    code, out = search_in_process(tiny_flags(search_data, storage, "allfail") + [
        "--lr", str(DIVERGING_LR), "--num-samples", "1", "--max-failures", "0", "--no-mlflow"])
    assert code == 1, out[-3000:]
    assert "nothing to export (all 1 trials failed; their errors are listed below)" in out
    assert "failed trial" in out and "diverged" in out
    assert "Export the best config" not in out and "run_search.py export" not in out
    summary = json_file(storage / "allfail" / SUMMARY_FILE)
    assert summary["num_failed"] == summary["num_trials"] == 1 and summary["best_trial_id"] is None


def test_time_budget_spent_before_any_report_says_so_and_exits_1(search_data, ray_env, tmp_path):
    storage = tmp_path / "results"
    code, out = search_in_process(tiny_flags(search_data, storage, "budget") + [
        "--num-samples", "1", "--grace-period", str(EPOCHS), "--time-budget", "1", "--no-mlflow"])
    # a 1 s budget ends the search before its trial reports an epoch (starting one takes longer)
    assert code == 1, out[-3000:]
    assert "the --time-budget of 1 s ran out before any trial reported its first epoch" in out
    assert "see the trial errors" not in out and "Export the best config" not in out
