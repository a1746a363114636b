"""tuner.scheduler: successive halving that pauses trials at a rung, with real Tune runs."""

import json
import os
import signal
import tempfile
import threading
import time

from optuna.trial import TrialState
from ray import tune
from ray.tune import ExperimentAnalysis

from tuner.scheduler import PromotingASHA, RungLimiter, rung_milestones
from tuner.searcher import BoundSpace, PruningOptunaSearch

MAX_T = 6
# Eight configurations in an order that puts weak ones first: Ray's ASHA lets the first
# arrivals at a rung through, this one makes them wait for rf results.
XS = [0.3, 0.2, 0.9, 0.1, 0.5, 0.7, 0.05, 0.4]


def toy_space(trial, base):
    return {"x": trial.suggest_float("x", 0.0, 1.0)}


def toy_trainable(config):
    """score = x * epoch; resumes from its checkpoint; logs every epoch it trains to a file."""
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d, open(f"{d}/state.json") as f:
            start = json.load(f)["epoch"]
    log = config["log"]
    for epoch in range(start + 1, MAX_T + 1):
        with open(log, "a") as f:
            f.write(json.dumps({"x": config["x"], "epoch": epoch}) + "\n")
        with tempfile.TemporaryDirectory() as d:
            with open(f"{d}/state.json", "w") as f:
                json.dump({"epoch": epoch}, f)
            tune.report({"epoch": epoch, "score": config["x"] * epoch, "val_loss": 1.0 - config["x"]},
                        checkpoint=tune.Checkpoint.from_directory(d))


TRAINABLE = tune.with_resources(tune.with_parameters(toy_trainable), {"cpu": 1})


def toy_tuner(tmp_path, concurrent: int, xs=XS, rf=4, name="toy"):
    """(Tuner, searcher, scheduler): the toy trainable under PromotingASHA + RungLimiter, as
    tuner.search builds them; every trained epoch is logged to tmp_path/epochs.jsonl."""
    searcher = PruningOptunaSearch(space=BoundSpace(toy_space, base=None), metric="score", mode="max", seed=0,
                                   max_epochs=MAX_T, config_keys={"x"}, points_to_evaluate=[{"x": x} for x in xs])
    scheduler = PromotingASHA(time_attr="epoch", metric="score", mode="max", max_t=MAX_T, grace_period=1,
                              reduction_factor=rf, num_samples=len(xs), max_concurrent=concurrent)
    tuner = tune.Tuner(
        TRAINABLE, param_space={"log": str(tmp_path / "epochs.jsonl")},
        tune_config=tune.TuneConfig(metric="score", mode="max", search_alg=RungLimiter(searcher, concurrent),
                                    scheduler=scheduler, num_samples=len(xs), reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name=name, verbose=0),
    )
    return tuner, searcher, scheduler


def trained_epochs(tmp_path) -> dict:
    """x -> the epochs its trial trained, in order (from the toy trainable's log)."""
    trained = {}
    for line in (tmp_path / "epochs.jsonl").read_text().splitlines():
        row = json.loads(line)
        trained.setdefault(row["x"], []).append(row["epoch"])
    return trained


def run(tmp_path, concurrent: int, xs=XS, rf=4):
    tuner, searcher, scheduler = toy_tuner(tmp_path, concurrent, xs, rf)
    results = tuner.fit()
    return results, trained_epochs(tmp_path), searcher, scheduler


def test_weak_trials_wait_at_the_rung_and_only_the_best_trains_fully(local_ray, tmp_path):
    results, trained, searcher, scheduler = run(tmp_path, concurrent=2)
    assert not results.errors and len(results) == len(XS)
    # each trial trained each of its epochs once: a paused trial resumed from its checkpoint
    for x, epochs in trained.items():
        assert epochs == list(range(1, len(epochs) + 1)), (x, epochs)
    last = {x: len(epochs) for x, epochs in trained.items()}
    assert last[0.9] == MAX_T                             # the best configuration ran in full
    assert all(last[x] < MAX_T for x in XS if x != 0.9)   # no other did
    assert all(last[x] >= 1 for x in XS)
    # rungs at epochs 1 and 4: 8 epochs at the first, then 8 // 4 = 2 trials (the two best)
    # to epoch 4 (+3 each), then the best to 6: 16 epochs, a third of FIFO's 48
    assert sum(last.values()) == 8 + 2 * 3 + 2
    assert {x for x in XS if last[x] >= 4} == {0.9, 0.7}
    # the study: the full trial COMPLETE, the others PRUNED (stopped while paused included)
    states = {searcher.study.trials[t.number].params["x"]: searcher.study.trials[t.number].state
              for t in searcher._ot_trials.values()}
    assert states.pop(0.9) == TrialState.COMPLETE and set(states.values()) == {TrialState.PRUNED}
    assert not scheduler.parked


def test_one_trial_at_a_time_does_not_deadlock(local_ray, tmp_path):
    xs = [0.2, 0.6, 0.4]  # fewer trials than rf: no rung ever promotes, the end game must
    results, trained, _, scheduler = run(tmp_path, concurrent=1, xs=xs)
    assert not results.errors and len(results) == len(xs)
    assert {x: len(e) for x, e in trained.items()} == {0.2: 1, 0.6: MAX_T, 0.4: 1}
    assert scheduler.num_stopped_parked == 2
    # the saved experiment state says so too (Ray alone would keep the stopped ones PAUSED)
    saved = ExperimentAnalysis(str(tmp_path / "toy")).trials
    assert sorted(str(t.status) for t in saved) == ["TERMINATED"] * 3


def test_rungs_and_ranking():
    assert rung_milestones(1, 4, 12) == [1, 4]
    assert rung_milestones(6, 3, 50) == [6, 18]
    assert rung_milestones(6, 3, 6) == []  # grace = max_t: no rung, FIFO
    s = PromotingASHA(time_attr="epoch", metric="macro_f1", mode="max", max_t=12, grace_period=1,
                      reduction_factor=2, num_samples=4, max_concurrent=2)
    # a tie on the metric goes to the lower validation loss; the metric itself always wins
    assert s.score({"macro_f1": 0.1, "val_loss": 3.0}) > s.score({"macro_f1": 0.1, "val_loss": 3.5})
    assert s.score({"macro_f1": 0.1001, "val_loss": 9.0}) > s.score({"macro_f1": 0.1, "val_loss": 0.0})
    s.recorded[1] = {"a": 0.1, "b": 0.3, "c": 0.2}
    assert s.top(1) == ["b"]                      # 3 // 2 = 1
    s.parked = {"b": 1}
    assert s.promotable() == ("b", 1)
    low = PromotingASHA(time_attr="epoch", metric="val_loss", mode="min", max_t=4, grace_period=1,
                        reduction_factor=2, num_samples=1, max_concurrent=1)
    assert low.score({"val_loss": 0.5}) > low.score({"val_loss": 0.7})


def test_limiter_state_leaves_the_scheduler_link_out():
    searcher = PruningOptunaSearch(space=BoundSpace(toy_space, base=None), metric="score", mode="max", seed=0,
                                   max_epochs=MAX_T, config_keys={"x"})
    limiter = RungLimiter(searcher, 2)
    scheduler = PromotingASHA(time_attr="epoch", metric="score", mode="max", max_t=MAX_T, grace_period=1,
                              reduction_factor=2, num_samples=2, max_concurrent=2)
    limiter.scheduler = scheduler
    state = limiter.get_state()
    assert "scheduler" not in state and limiter.scheduler is scheduler
    limiter.set_state({**state, "scheduler": None})
    assert limiter.scheduler is scheduler


def test_resume_with_trials_paused_at_a_rung_completes(local_ray, tmp_path):
    """Interrupted while trials wait at a rung; Tuner.restore (what --resume runs) finishes the
    search: every trial ends, each epoch trained once, the best configuration in full."""
    log = tmp_path / "epochs.jsonl"
    xs = [0.3, 0.2, 0.9, 0.1, 0.5]

    def ctrl_c_once_two_trials_wait():  # what Ctrl-C sends, once 2 trials reported epoch 1 (paused)
        deadline = time.time() + 120
        while time.time() < deadline:
            if log.is_file() and sum('"epoch": 1}' in line for line in log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, lambda *_: None)  # a mistimed signal must not stop pytest
    killer = threading.Thread(target=ctrl_c_once_two_trials_wait, daemon=True)
    killer.start()
    try:
        toy_tuner(tmp_path, concurrent=1, xs=xs, name="resumed")[0].fit()
    finally:
        killer.join(timeout=150)
        signal.signal(signal.SIGINT, previous)
    first = ExperimentAnalysis(str(tmp_path / "resumed")).trials
    assert "PAUSED" in {str(t.status) for t in first}  # interrupted with a trial waiting at the rung
    results = tune.Tuner.restore(str(tmp_path / "resumed"), trainable=TRAINABLE, resume_unfinished=True).fit()
    assert not results.errors and len(results) == len(xs)
    trained = trained_epochs(tmp_path)
    waiting = {t.config["x"] for t in first if str(t.status) == "PAUSED"}
    for x, epochs in trained.items():
        assert sorted(set(epochs)) == list(range(1, max(epochs) + 1)), (x, epochs)
        if x in waiting:  # paused at the rung: resumed from its checkpoint, no epoch trained twice
            assert epochs == list(range(1, len(epochs) + 1)), (x, epochs)
    # (a trial running at the Ctrl-C redoes the epoch it was in, from its last checkpoint)
    assert max(trained[0.9]) == MAX_T and set(trained) == set(xs)
    saved = ExperimentAnalysis(str(tmp_path / "resumed")).trials
    assert sorted(str(t.status) for t in saved) == ["TERMINATED"] * len(xs)
