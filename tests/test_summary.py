"""tuner.summary: ties at the first rung, the winner against trial 0, per-epoch scores from result.json."""

import json
from types import SimpleNamespace

from trainable.config import TrainConfig
from tuner.summary import SUMMARY_KEYS, TrialRecord, build_summary, count_ties, format_report, trial_records

BASE = TrainConfig(epochs=4)


def record(trial_id, number, scores, status="TERMINATED", overrides=None, shared=0):
    last = max(scores) if scores else 0
    return TrialRecord(trial_id=trial_id, status=status, overrides=overrides or {}, epochs_done=last,
                       epochs_planned=BASE.epochs, value=scores[last] if scores else None, error=None,
                       scores=dict(scores), number=number, shared_epochs=shared)


def settings(**extra):
    return SimpleNamespace(name="exp", storage_path="/s", space="stage_epochs", metric="macro_f1", mode="max",
                           base=BASE, grace_period=1, sampler="tpe", **{"share_prefix": True, **extra})


def test_ties_at_the_first_rung_are_counted_in_the_summary_and_the_report():
    records = [
        record("a", 0, {1: 0.005477, 2: 0.1, 3: 0.2, 4: 0.30}),
        record("b", 1, {1: 0.005477}),                      # same score as a at epoch 1
        record("c", 2, {1: 0.005477, 2: 0.1, 3: 0.3, 4: 0.40}, overrides={"stage2_epoch": 2}),
        record("d", 3, {1: 0.02}),                          # a pair of its own
        record("e", 4, {1: 0.02 + 1e-15}),                  # equal to 12 decimals: a tie
        record("f", 5, {1: 0.03}),                          # alone
        record("g", 6, {}, status="ERROR"),                 # never reached the rung
        record("h", 7, {1: 0.03}, shared=1),                # f's twin: forked from its epoch-1 checkpoint
    ]
    summary = build_summary(settings(), records, wall_time_s=3.0)
    assert tuple(summary) == SUMMARY_KEYS
    assert summary["first_rung_ties"] == {"epoch": 1, "tied": 5, "scored": 7, "twins": 1}
    assert summary["sampler"] == "tpe"
    report = format_report(summary, records, BASE)
    assert "First rung (epoch 1): 5 of 7 trials scored there tie with another on macro_f1" in report
    assert "1 more started from an earlier trial's checkpoint at or past it" in report
    assert count_ties([0.1, None, 0.1, 0.2]) == 2 and count_ties([None, 0.1]) == 0


def test_the_report_puts_the_winner_against_trial_0():
    records = [record("seed", 0, {1: 0.1, 2: 0.2, 3: 0.25, 4: 0.30}),
               record("win", 1, {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.42}, overrides={"stage2_epoch": 3})]
    summary = build_summary(settings(), records, wall_time_s=3.0)
    seed = summary["seed_trial"]
    assert (seed["trial_id"], seed["value"], seed["epochs"], seed["winner_epochs"]) == ("seed", 0.30, 4, 4)
    assert abs(seed["difference"] - 0.12) < 1e-12 and seed["winner_is_seed_trial"] is False
    report = format_report(summary, records, BASE)
    assert "Winner vs trial 0 (seed, the seed recipe): macro_f1 0.4200 (4 epochs) vs 0.3000 (4/4 epochs): +0.1200." \
        in report


def test_the_report_says_when_the_winner_is_trial_0_or_trial_0_stopped_early():
    records = [record("seed", 0, {1: 0.1, 4: 0.5}), record("other", 1, {1: 0.05})]
    summary = build_summary(settings(), records, wall_time_s=1.0)
    assert summary["seed_trial"]["winner_is_seed_trial"] is True
    assert "The winner is trial 0 (seed), the seed recipe: no sampled configuration beat it (macro_f1 0.5000 " \
           "after 4 epochs)." in format_report(summary, records, BASE)

    records = [record("seed", 0, {1: 0.1}), record("win", 1, {1: 0.08, 2: 0.2, 3: 0.3, 4: 0.4}, {"lr": 0.01})]
    summary = build_summary(settings(), records, wall_time_s=1.0)
    assert summary["seed_trial"]["winner_value_at_seed_epochs"] == 0.08
    report = format_report(summary, records, BASE)
    assert "vs 0.1000 (1/4 epochs): +0.3000." in report
    assert "trial 0 was stopped early, so not on the same budget; at its last epoch (1) the winner had 0.0800 " \
           "(-0.0200)." in report


def test_trial_records_read_every_epochs_score_and_the_creation_order(tmp_path):
    """(A restarted trial of a real search kept only its last epoch in result.json.)"""
    trial_dir = tmp_path / "t2"
    trial_dir.mkdir()
    rows = [{"epoch": 1, "macro_f1": 0.1}, {"epoch": 2, "macro_f1": 0.25}]
    # after a restart from a checkpoint Tune's result.json holds only the epochs since; progress.csv all
    (trial_dir / "progress.csv").write_text("epoch,macro_f1,val_loss\n1,0.1,4.1\n2,0.25,4.0\n")
    (trial_dir / "result.json").write_text(json.dumps(rows[1]) + "\n{truncated")
    trial = SimpleNamespace(trial_id="x", status="TERMINATED", config={}, path=str(trial_dir),
                            experiment_tag="2_stage2_frac=0.3", last_result=rows[-1])
    without_dir = SimpleNamespace(trial_id="y", status="TERMINATED", config={}, last_result={"epoch": 1,
                                                                                          "macro_f1": 0.2})
    first, second = trial_records([trial, without_dir], BASE, "macro_f1")
    assert first.scores == {1: 0.1, 2: 0.25} and first.number == 1
    assert second.scores == {1: 0.2} and second.number == 1  # no tag: its place in the list


def test_epochs_taken_from_an_earlier_trials_prefix_are_reported_apart_from_those_trained():
    records = [TrialRecord("a", "TERMINATED", {}, 12, 12, 0.4, None),
               TrialRecord("b", "TERMINATED", {}, 5, 12, 0.3, None, shared_epochs=3),
               TrialRecord("c", "TERMINATED", {}, 5, 12, 0.2, None, shared_epochs=2)]
    summary = build_summary(settings(), records, 10.0)
    assert summary["epochs_consumed"] == 22 and summary["epochs_trained"] == 17
    assert summary["prefix_sharing"] == {"enabled": True, "trials_forked": 2, "epochs_shared": 5}
    report = format_report(summary, records, BASE)
    assert "Prefix sharing: 2 trials started from an earlier trial's checkpoint, so 17 of the 22 epochs" in report
    off = build_summary(settings(share_prefix=False), records[:1], 10.0)
    assert off["prefix_sharing"] == {"enabled": False, "trials_forked": 0, "epochs_shared": 0}
    assert "Prefix sharing" not in format_report(off, records[:1], BASE)
