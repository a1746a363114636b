"""Pins every library internal trainable._compat relies on: an upgrade that moves one fails here first."""

from __future__ import annotations

import argparse
import inspect

import torch

from trainable import _compat


def test_torch_storage_use_count_counts_views():
    buffer = torch.empty(16)
    alone = _compat.storage_use_count(buffer)
    assert isinstance(alone, int) and alone >= 1
    view = buffer.view(4, 4)
    assert _compat.storage_use_count(buffer) == alone + 1
    del view
    assert _compat.storage_use_count(buffer) == alone


def test_ray_internals_are_where_compat_looks():
    from ray._private import services
    from ray.train._internal import storage
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.result_grid import ResultGrid
    from ray.tune.search import SearchGenerator

    assert list(inspect.signature(services.canonicalize_bootstrap_address).parameters)[0] == "addr"
    assert callable(storage.get_fs_and_path)
    assert "self._experiment" in inspect.getsource(SearchGenerator)
    assert callable(TuneController._mark_trial_to_checkpoint)
    assert "self._experiment_analysis" in inspect.getsource(ResultGrid.__init__)


def test_a_tuner_keeps_its_configs_where_restore_rewires_them():
    from ray import tune

    tuner = tune.Tuner(lambda config: None, tune_config=tune.TuneConfig(num_samples=3),
                       run_config=tune.RunConfig(callbacks=[]))
    marker = tune.Callback()
    config = _compat.restored_tuner_config(tuner, [marker])
    assert isinstance(config, tune.TuneConfig) and config.num_samples == 3
    assert tuner._local_tuner._run_config.callbacks == [marker]


def test_ray_optuna_search_keeps_its_study_where_compat_reads_it():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric="m", mode="max")
    study = _compat.optuna_study(searcher)
    assert isinstance(study, optuna.Study)
    assert _compat.optuna_study_from_state(searcher.__dict__) is study


def test_argparse_lists_actions_and_groups_where_compat_reads_them():
    parser = argparse.ArgumentParser()
    first = parser.add_argument_group("training configuration")
    first.add_argument("--lr")
    parser.add_argument_group("search").add_argument("--space")
    _compat.move_group_last(parser, "training")
    assert parser._action_groups[-1] is first
    assert parser.format_help().index("search:") < parser.format_help().index("training configuration:")


def test_ssl_offers_an_unverified_context():
    import ssl

    context = _compat.unverified_ssl_context()
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_NONE
