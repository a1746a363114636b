"""Search spaces: every sample is a valid TrainConfig; the seed point reproduces the base."""

from __future__ import annotations

import pickle
import warnings

import optuna
import pytest

import search_spaces
from search_spaces import yaml_space
from search_spaces._params import Offset
from trainable.config import SEED_EPOCHS, TrainConfig, field_names, scale_schedule
from trainable.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)
EPOCHS = (50, 12, 4)
BUILTIN = ("stage_epochs", "augmentation", "focal", "optim", "full")


def seed_base(epochs: int, **changes) -> TrainConfig:
    """The seed recipe with its schedule scaled to `epochs` (as --epochs does)."""
    values = scale_schedule(TrainConfig().to_dict(), SEED_EPOCHS, epochs)
    return TrainConfig.from_dict({**values, "epochs": epochs, **changes}).validate()


def test_registry_names():
    assert search_spaces.names() == sorted(BUILTIN)
    with pytest.raises(UserError, match="unknown search space 'nope'.*stage_epochs"):
        search_spaces.get("nope")


@pytest.mark.parametrize("epochs", EPOCHS)
@pytest.mark.parametrize("name", BUILTIN)
def test_500_random_samples_are_valid(name, epochs):
    base = seed_base(epochs)
    space = search_spaces.get(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=epochs))
    seen = set()
    for _ in range(500):
        trial = study.ask()
        overrides = space(trial, base)
        assert set(overrides) <= set(field_names())
        base.replace(**overrides).validate()
        seen.add(tuple(sorted(overrides.items())))
    assert len(seen) > 50  # it really explores


@pytest.mark.parametrize("name", BUILTIN)
def test_tpe_with_seed_point_first(name):
    """Optuna's default (multivariate) TPE drives the space; the enqueued seed runs first."""
    base = seed_base(12)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(search_spaces.seed_defaults(base, name))
    fn = search_spaces.define_by_run(name, base)
    configs = []

    def objective(trial):
        cfg = base.replace(**fn(trial)).validate()
        configs.append(cfg)
        return cfg.lr * 1000 + cfg.stage2_epoch + cfg.mixup_alpha

    study.optimize(objective, n_trials=40)
    assert configs[0] == base


@pytest.mark.parametrize("epochs", (*EPOCHS, 1))
@pytest.mark.parametrize("name", BUILTIN)
def test_seed_defaults_reproduce_the_base(name, epochs):
    base = seed_base(epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        params = search_spaces.seed_defaults(base, name)
    overrides = search_spaces.overrides_from_params(name, params, base)
    assert base.replace(**overrides) == base
    assert set(params) == {p for p in search_spaces.get(name).param_names if p in params}


@pytest.mark.parametrize("name", BUILTIN)
def test_seed_defaults_reproduce_the_demo_recipe(name):
    """`run_search.py --demo`: its first trial is exactly `python -m trainable --demo`
    (the seed's staging scaled to 12 epochs: stage 2 at epoch 2, stage 3 at 5)."""
    from trainable.cli_config import DEMO_RECIPE

    base = seed_base(50)
    base = TrainConfig.from_dict({**scale_schedule(base.to_dict(), SEED_EPOCHS, DEMO_RECIPE["epochs"]),
                                  **DEMO_RECIPE}).validate()
    assert (base.stage2_epoch, base.stage3_epoch, base.smoothing_decay_epoch1) == (2, 5, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        params = search_spaces.seed_defaults(base, name)
    assert base.replace(**search_spaces.overrides_from_params(name, params, base)) == base


def test_seed_defaults_with_ema_on_and_a_custom_lr():
    base = seed_base(50, use_ema=True, ema_decay=0.995, lr=0.01)
    params = search_spaces.seed_defaults(base, "optim")
    assert params["use_ema"] is True and params["ema_decay"] == 0.995 and params["lr"] == 0.01
    assert base.replace(**search_spaces.overrides_from_params("optim", params, base)) == base


def test_seed_outside_the_space_warns_and_stays_valid():
    base = seed_base(50, weight_decay=0.0, lr_restart_epoch=15)  # restart before stage 3
    with pytest.warns(UserWarning, match="lr_restart_epoch=15, weight_decay=0.0"):
        params = search_spaces.seed_defaults(base, "full")
    base.replace(**search_spaces.overrides_from_params("full", params, base)).validate()


def test_full_is_the_union_without_collisions():
    full = search_spaces.get("full")
    assert len(full.param_names) == len(set(full.param_names))
    assert len(full.fields) == len(set(full.fields))
    parts = set()
    for name in BUILTIN[:-1]:
        parts |= set(search_spaces.get(name).fields)
    assert set(full.fields) == parts


def test_derived_param_names_are_not_field_names():
    """Ray merges Optuna params into the trial config: a `*_frac` must not shadow a field."""
    for name in BUILTIN:
        for decl in search_spaces.get(name).decls:
            if isinstance(decl, Offset):
                assert decl.param not in field_names()
            else:
                assert decl.param == decl.field


def test_overrides_from_config_drops_search_params():
    config = {"stage2_frac": 0.3, "stage2_epoch": 7, "lr": 1e-3}
    assert search_spaces.overrides_from_config(config) == {"stage2_epoch": 7, "lr": 1e-3}


@pytest.mark.parametrize("name", BUILTIN)
def test_define_by_run_pickles(name):
    """Ray pickles the searcher (space included) with plain pickle on every checkpoint."""
    fn = pickle.loads(pickle.dumps(search_spaces.define_by_run(name, seed_base(12))))
    params = search_spaces.seed_defaults(seed_base(12), name)
    assert fn(optuna.trial.FixedTrial(params)) == search_spaces.overrides_from_params(
        name, params, seed_base(12))


def test_builtin_check_passes():
    for name in BUILTIN:
        search_spaces.check(name, seed_base(4))


# ---------------------------------------------------------------------------- YAML spaces
GOOD = """
lr: {type: loguniform, low: 1e-5, high: 1.0e-2}
dropout: {type: float, low: 0.0, high: 0.5}
stage2_epoch: {type: int, low: 5, high: 12}
stage3_epoch: {type: int, low: 15, high: 30}
batch_size: {type: loguniform, low: 16, high: 128}
backbone: {type: categorical, choices: [resnet50, efficientnet_b0]}
use_ema: {type: categorical, choices: [true, false]}
"""


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_space_samples_are_valid(tmp_path):
    path = write(tmp_path, GOOD)
    base = seed_base(50)
    space = search_spaces.check(path, base)
    assert space.param_names == ["lr", "dropout", "stage2_epoch", "stage3_epoch", "batch_size",
                                 "backbone", "use_ema"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(500):
        overrides = space(study.ask(), base)
        cfg = base.replace(**overrides).validate()
        assert 5 <= cfg.stage2_epoch <= 12 and 1e-5 <= cfg.lr <= 1e-2
        assert isinstance(cfg.batch_size, int) and cfg.backbone in ("resnet50", "efficientnet_b0")


def test_yaml_seed_defaults(tmp_path):
    path = write(tmp_path, GOOD)
    base = seed_base(50, stage2_epoch=8)
    params = search_spaces.seed_defaults(base, path)
    assert params == {"lr": base.lr, "dropout": base.dropout, "stage2_epoch": 8, "stage3_epoch": 20,
                      "batch_size": 32, "backbone": "resnet50", "use_ema": False}
    assert base.replace(**search_spaces.overrides_from_params(path, params, base)) == base


def test_yaml_seed_omits_a_choice_the_base_lacks(tmp_path):
    path = write(tmp_path, "backbone: {type: categorical, choices: [vit_small]}\n")
    with pytest.warns(UserWarning, match="backbone=resnet50"):
        assert search_spaces.seed_defaults(seed_base(50), path) == {}


BAD = [
    ("nonsense: {type: int, low: 1, high: 2}", "nonsense: not a TrainConfig field"),
    ("lr: {type: normal, low: 1, high: 2}", "lr: type must be one of"),
    ("lr: {type: float, low: 0.1}", "lr: type float needs high"),
    ("lr: {type: float, low: 0.1, high: 0.2, step: 1}", "lr: unexpected key"),
    ("lr: {type: float, low: 0.5, high: 0.1}", r"lr: low \(0.5\) is above high \(0.1\)"),
    ("lr: {type: loguniform, low: 0, high: 0.1}", "lr: loguniform needs low > 0"),
    ("lr: {type: float, low: abc, high: 0.1}", "lr: low must be a number"),
    ("batch_size: {type: float, low: 1, high: 5}", "batch_size: is an integer field"),
    ("batch_size: {type: int, low: 1.5, high: 5}", "whole numbers"),
    ("lr: {type: float, low: 1.0e-5, high: .inf}", r"lr: high must be a finite number \(got inf\)"),
    ("lr: {type: loguniform, low: 1.0e-5, high: .inf}", "lr: high must be a finite number"),
    ("lr: {type: float, low: .nan, high: 0.1}", r"lr: low must be a finite number \(got nan\)"),
    ("stage2_epoch: {type: int, low: -.inf, high: 5}", "stage2_epoch: low must be a finite number"),
    # (TrainConfig's coerce may refuse a non-finite value first: either way one line naming it)
    ("dropout: {type: categorical, choices: [.nan, 0.1]}", "dropout: (choices must be finite|dropout=nan is not)"),
    ("lr: {type: categorical, choices: [0.1, .inf]}", "lr: (choices must be finite|lr=inf is not)"),
    ("dropout: {type: int, low: 0, high: 1}", "dropout: is a float field"),
    ("backbone: {type: int, low: 0, high: 1}", "backbone: is a str field"),
    ("optimizer: {type: categorical, choices: []}", "optimizer: choices must be a non-empty list"),
    ("batch_size: {type: categorical, choices: [16, big]}", "batch_size='big' is not a valid int"),
    ("lr: 0.1", "lr: expected {type"),
    ("- lr", "expected a mapping"),
    ("lr: {type: float, low: [1, high: 2}", "not valid YAML"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_yaml_space_errors_name_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text + "\n", "bad.yaml")
    with pytest.raises(UserError, match=message) as info:
        search_spaces.get(path)
    assert str(info.value).startswith(path) and "\n" not in str(info.value)


@pytest.mark.parametrize("text,message", [
    ("stage2_epoch: {type: int, low: 5, high: 25}\nstage3_epoch: {type: int, low: 20, high: 30}",
     "stage2_epoch: the range allows an invalid config"),
    ("smoothing_decay_epoch1: {type: int, low: 10, high: 30}\n"
     "smoothing_decay_epoch2: {type: int, low: 25, high: 40}",
     "smoothing_decay_epoch1: the range allows.*out of order"),
    ("stage3_epoch: {type: int, low: 5, high: 30}", "stage3_epoch: the range allows"),
    ("final_clean_epoch: {type: int, low: 10, high: 60}", "beyond --epochs 50"),
    ("stage2_epoch: {type: int, low: 5, high: 25}\nstage3_epoch: {type: int, low: 20, high: 30}",
     r"out of order.*; narrow it so ordered switches do not overlap$"),
    ("mixup_prob: {type: float, low: 0.5, high: 1.5}", "probability"),
    ("optimizer: {type: categorical, choices: [adamw, lion]}", "must be one of"),
])
def test_yaml_space_ranges_checked_against_the_base(tmp_path, text, message):
    path = write(tmp_path, text + "\n")
    search_spaces.get(path)  # structurally fine
    with pytest.raises(UserError, match=message):
        search_spaces.check(path, seed_base(50))


def test_yaml_range_error_shows_the_value_once_and_no_unrelated_hint(tmp_path):
    path = write(tmp_path, "mixup_prob: {type: float, low: 0.5, high: 1.5}\n")
    with pytest.raises(UserError) as info:
        search_spaces.check(path, seed_base(50))
    assert str(info.value) == (f"{path}: mixup_prob: the range allows an invalid config (--mixup-prob=1.5: "
                               f"is a probability: use a value in [0, 1]); narrow it")


# Every field a space must not tune, as a user would write it (the type its field takes).
UNSEARCHABLE = {
    "train_dir": "{type: categorical, choices: [data/a, /nonexistent/b]}",
    "val_dir": "{type: categorical, choices: [a, b]}",
    "train_meta": "{type: categorical, choices: [a.csv, b.csv]}",
    "val_meta": "{type: categorical, choices: [a.csv, b.csv]}",
    "class_weights": "{type: categorical, choices: [w.csv, '']}",
    "demo": "{type: categorical, choices: [true, false]}",
    "image_size": "{type: int, low: 32, high: 64}",
    "progressive_image_size": "{type: categorical, choices: [40, 64]}",
    "epochs": "{type: int, low: 1, high: 3}",
    "pretrained_path": "{type: categorical, choices: [a.pth, b.pth]}",
    "save_dir": "{type: categorical, choices: [a, b]}",
    "resume": "{type: categorical, choices: [a.pth]}",
    "device": "{type: categorical, choices: [cpu, cuda]}",
    "num_workers": "{type: int, low: 0, high: 4}",
    "log_interval": "{type: int, low: 1, high: 10}",
    "save_freq": "{type: int, low: 0, high: 5}",
    "seed": "{type: int, low: 0, high: 100}",
}


@pytest.mark.parametrize("field", sorted(UNSEARCHABLE))
def test_fields_a_search_cannot_tune_are_refused_with_the_flag_to_use(tmp_path, field):
    path = write(tmp_path, f"lr: {{type: loguniform, low: 1.0e-4, high: 1.0e-2}}\n{field}: {UNSEARCHABLE[field]}\n")
    with pytest.raises(UserError) as info:
        search_spaces.get(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}: cannot be searched: ") and "\n" not in message
    assert search_spaces.unsearchable(field) in message


def test_no_builtin_space_tunes_a_field_a_search_cannot():
    assert set(UNSEARCHABLE) == set(yaml_space.UNSEARCHABLE)
    for name in BUILTIN:
        assert not [f for f in search_spaces.get(name).fields if search_spaces.unsearchable(f)], name


def test_yaml_ordered_ranges_beyond_the_base_values_are_fine(tmp_path):
    """Both ordered switches searched, away from the base's own values: no false alarm."""
    path = write(tmp_path, "stage2_epoch: {type: int, low: 21, high: 24}\n"
                           "stage3_epoch: {type: int, low: 25, high: 30}\n")
    search_spaces.check(path, seed_base(50))


def test_missing_yaml_file():
    with pytest.raises(UserError, match="missing.yaml: search space file not found"):
        search_spaces.get("missing.yaml")


def test_ray_optuna_search_runs_the_seed_first():
    """The wiring the orchestrator uses: Ray's OptunaSearch with a define-by-run space."""
    from ray.tune.search.optuna import OptunaSearch

    base = seed_base(12)
    searcher = OptunaSearch(space=search_spaces.define_by_run("full", base), metric="macro_f1",
                            mode="max", points_to_evaluate=[search_spaces.seed_defaults(base, "full")],
                            seed=0)
    first, second = searcher.suggest("t0"), searcher.suggest("t1")
    assert base.replace(**search_spaces.overrides_from_config(first)) == base
    assert "stage2_frac" in first  # Ray merges the Optuna params into the trial config
    assert base.replace(**search_spaces.overrides_from_config(second)).validate() != base
