"""ASHA-stopped trials reach Optuna as PRUNED (Ray's OptunaSearch says COMPLETE), with real Tune runs."""

import pickle
import warnings

import optuna
import pytest
from optuna.samplers import RandomSampler, TPESampler
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from tuner.searcher import BoundSpace, PruningOptunaSearch, RungTPESampler, build_sampler, startup_trials

MAX_T = 4


def toy_space(trial, base):
    trial.suggest_int("offset", 0, 3)  # a helper parameter: sampled, but not a config key
    return {"x": trial.suggest_float("x", 0.0, 1.0)}


def plain_space(trial):
    return {"x": trial.suggest_float("x", 0.0, 1.0)}


def toy_trainable(config):
    for epoch in range(1, MAX_T + 1):
        tune.report({"epoch": epoch, "score": config["x"] * epoch})


# Strong trials first, so the weak ones meet a rung that ASHA has already filled.
POINTS = [{"x": 0.9, "offset": 0}, {"x": 0.8, "offset": 1}, {"x": 0.1, "offset": 2}, {"x": 0.05, "offset": 3}]


def run_toy_search(searcher, tmp_path):
    tuner = tune.Tuner(
        tune.with_resources(toy_trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            metric="score", mode="max", search_alg=searcher, num_samples=len(POINTS), max_concurrent_trials=2,
            scheduler=ASHAScheduler(time_attr="epoch", max_t=MAX_T, grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="toy", verbose=0),
    )
    results = tuner.fit()
    return {r.metrics["trial_id"]: r.metrics["epoch"] for r in results}


def test_asha_stopped_trials_are_pruned_in_the_study(local_ray, tmp_path):
    searcher = PruningOptunaSearch(space=BoundSpace(toy_space, base=None), metric="score", mode="max", seed=3,
                                   max_epochs=MAX_T, config_keys={"x"}, points_to_evaluate=POINTS)
    last_epochs = run_toy_search(searcher, tmp_path)
    study = searcher.study
    assert len(study.trials) == len(last_epochs) == len(POINTS)
    states = {}
    for trial_id, ot_trial in searcher._ot_trials.items():
        frozen = study.trials[ot_trial.number]
        states[trial_id] = frozen.state
        epochs = last_epochs[trial_id]
        # every reported epoch is an intermediate value, including the one ASHA stopped on
        assert sorted(frozen.intermediate_values) == list(range(1, epochs + 1))
        if epochs < MAX_T:
            assert frozen.state == TrialState.PRUNED, (trial_id, epochs)
            # Optuna keeps a pruned trial's last intermediate value as its value (and TPE ranks
            # pruned trials by step and that value, below complete ones)
            assert frozen.value == pytest.approx(frozen.intermediate_values[epochs])
        else:
            assert frozen.state == TrialState.COMPLETE, (trial_id, epochs)
            assert frozen.value == pytest.approx(frozen.params["x"] * MAX_T)
    assert TrialState.PRUNED in states.values() and TrialState.COMPLETE in states.values()
    assert set(searcher.pruned_trials) == {t for t, e in last_epochs.items() if e < MAX_T}
    # the helper parameter was sampled by Optuna but kept out of the trial's config
    assert all("offset" in t.params for t in study.trials)


def test_rays_own_optuna_search_would_record_them_complete():
    """The premise (Ray 2.60): given the last result of an ASHA-stopped trial, as Tune passes it
    (see the test above for that), Ray's OptunaSearch tells Optuna COMPLETE with the early score."""
    searcher = OptunaSearch(space=plain_space, metric="score", mode="max", seed=3)
    searcher.suggest("stopped")
    searcher.on_trial_result("stopped", {"epoch": 1, "score": 0.1, "training_iteration": 1})
    searcher.on_trial_complete("stopped", result={"epoch": 2, "score": 0.2, "training_iteration": 2})
    frozen = searcher._ot_study.trials[0]
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.2


def test_direct_protocol_errors_and_per_trial_epochs():
    searcher = PruningOptunaSearch(space=BoundSpace(toy_space, base=None), metric="score", mode="max", seed=0,
                                   max_epochs=10, config_keys={"x", "epochs"})
    config = searcher.suggest("a")
    assert set(config) == {"x"}
    searcher.on_trial_result("a", {"epoch": 1, "score": 0.5, "training_iteration": 1})
    searcher.on_trial_complete("a", error=True)
    searcher.suggest("b")
    searcher._trial_epochs["b"] = 3  # as if the space had set epochs=3 for this trial
    searcher.on_trial_complete("b", result={"epoch": 3, "score": 0.9})
    searcher.suggest("c")
    searcher.on_trial_complete("c", result={"epoch": 2, "score": 0.1})
    states = [t.state for t in searcher.study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.PRUNED]
    assert searcher.study.trials[2].intermediate_values == {2: 0.1}
    # a second completion for the same trial is ignored, not an error
    searcher.on_trial_complete("c", result={"epoch": 3, "score": 0.1})
    assert searcher.study.trials[2].state == TrialState.PRUNED


def test_searcher_with_bound_space_pickles_like_tune_saves_it(tmp_path):
    searcher = PruningOptunaSearch(space=BoundSpace(toy_space, base=None), metric="score", mode="max", seed=0,
                                   max_epochs=4, points_to_evaluate=[{"x": 0.25, "offset": 1}])
    assert searcher.suggest("first") == {"x": 0.25, "offset": 1}  # no config_keys: everything sampled
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    again = PruningOptunaSearch(space=BoundSpace(toy_space, base=None), metric="score", mode="max", seed=0,
                                max_epochs=4)
    again.restore(str(path))
    assert len(again.study.trials) == 1 and "first" in again._ot_trials
    assert isinstance(pickle.loads(pickle.dumps(BoundSpace("stage_epochs", base=None))), BoundSpace)
    assert optuna.__version__.startswith("5.")


def test_tpe_startup_trials_scale_with_the_budget():
    # Optuna's default (10) would leave a 12-trial search one TPE proposal
    assert [startup_trials(n) for n in (1, 4, 8, 12, 20, 40, 200)] == [2, 2, 2, 3, 5, 10, 10]
    for n, expected in ((12, 3), (20, 5), (100, 10)):
        sampler = build_sampler("tpe", 7, n, "stage_epochs")
        assert isinstance(sampler, RungTPESampler) and sampler._n_startup_trials == expected
        assert sampler._constant_liar is True and sampler._multivariate is None  # Optuna 5's defaults: on


def test_group_only_where_the_space_is_conditional_and_no_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        groups = {space: build_sampler("tpe", 0, 12, space)._group for space in ("stage_epochs", "augmentation",
                                                                                   "focal", "optim", "full")}
    # optim (and so full) samples ema_decay only when use_ema: a conditional space
    assert groups == {"stage_epochs": False, "augmentation": False, "focal": False, "optim": True, "full": True}
    assert [str(w.message) for w in caught] == []


def test_random_sampler_is_optunas_with_the_seed():
    sampler = build_sampler("random", 5, 12, "stage_epochs")
    assert type(sampler) is RandomSampler
    draws = [optuna.create_study(sampler=s).ask().suggest_float("x", 0, 1)
             for s in (sampler, RandomSampler(seed=5))]
    assert draws[0] == draws[1]
    with pytest.raises(ValueError, match="unknown sampler"):
        build_sampler("grid", 0, 12, "stage_epochs")


def _proposals_after_paused_trials(sampler) -> list[float]:
    """20 trials paused at a rung (RUNNING, one epoch reported; best near x = 0.8), then 8 proposals."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for i in range(20):
        x = (i + 0.5) / 20
        study.enqueue_trial({"x": x})
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.report(-abs(x - 0.8), 1)
    proposals = []
    for _ in range(8):
        trial = study.ask()
        proposals.append(trial.suggest_float("x", 0, 1))
        study.tell(trial, state=TrialState.FAIL)  # out of the way of the next proposal
    return proposals


def test_tpe_learns_from_trials_paused_at_a_rung():
    # Plain TPE counts only COMPLETE/PRUNED trials towards n_startup_trials: with every trial
    # paused it stays in its startup phase, i.e. draws exactly what a RandomSampler draws.
    plain = _proposals_after_paused_trials(TPESampler(n_startup_trials=3, seed=0))
    assert plain == _proposals_after_paused_trials(RandomSampler(seed=0))
    learnt = _proposals_after_paused_trials(RungTPESampler(n_startup_trials=3, seed=0))
    assert all(abs(x - 0.8) < 0.05 for x in learnt), learnt
    assert not all(abs(x - 0.8) < 0.05 for x in plain)


def test_search_builds_the_chosen_sampler_and_it_pickles(tmp_path):
    from types import SimpleNamespace

    from trainable.config import TrainConfig
    from tuner.search import build_searcher

    settings = SimpleNamespace(space="optim", base=TrainConfig(epochs=4), metric="macro_f1", mode="max", seed=3,
                               num_samples=12, sampler="tpe")
    searcher = build_searcher(settings)
    searcher.suggest("t0")
    assert isinstance(searcher.study.sampler, RungTPESampler) and searcher.study.sampler._group
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))  # what Tune does for --resume
    again = build_searcher(settings)
    again.restore(str(path))
    assert isinstance(again.study.sampler, RungTPESampler) and again.study.sampler._n_startup_trials == 3
    settings.sampler = "random"
    assert type(build_searcher(settings)._sampler) is RandomSampler


def test_sampler_flag(tmp_path, capsys):
    from tuner.cli import parse_settings

    flags = ["--storage-path", str(tmp_path), "--epochs", "4"]
    assert parse_settings(flags).sampler == "tpe"
    assert parse_settings(flags + ["--sampler", "random"]).sampler == "random"
    with pytest.raises(SystemExit) as stop:
        parse_settings(flags + ["--sampler", "grid"])
    assert stop.value.code == 2 and "invalid choice: 'grid'" in capsys.readouterr().err
