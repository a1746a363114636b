"""Search spaces: define-by-run functions `(optuna.Trial, base: TrainConfig) -> overrides`.

    space = search_spaces.get("stage_epochs")          # or a path to a YAML space
    search_spaces.check("stage_epochs", base)          # before Ray starts (UserError if unusable)
    OptunaSearch(space=search_spaces.define_by_run("stage_epochs", base),
                 points_to_evaluate=[search_spaces.seed_defaults(base, "stage_epochs")], ...)
    # in the trial: base.replace(**search_spaces.overrides_from_config(trial_config))

Ray puts the Optuna params *and* the returned overrides into a trial's config; params that
are not TrainConfig fields (the `*_frac` schedule fractions) are filtered out by
`overrides_from_config`. Imports only trainable.config (and optuna, lazily, for FixedTrial).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from search_spaces import augmentation, focal, full, optim, stage_epochs, yaml_space
from search_spaces._params import Space
from search_spaces.yaml_space import unsearchable
from trainable.config import TrainConfig, field_names
from trainable.errors import UserError

_REGISTRY: dict[str, Space] = {
    module.SPACE.name: module.SPACE for module in (stage_epochs, augmentation, focal, optim, full)
}


def names() -> list[str]:
    return sorted(_REGISTRY)


def _is_yaml(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or Path(name).is_file()


def get(name_or_yaml_path: str) -> Space:
    """The space registered under this name, or loaded (and validated) from a YAML file."""
    name = str(name_or_yaml_path)
    if name in _REGISTRY:
        return _REGISTRY[name]
    if _is_yaml(name):
        return yaml_space.load(name)
    raise UserError(f"unknown search space {name!r}: choose one of {', '.join(names())} "
                    f"or pass a .yaml file")


def check(name_or_yaml_path: str, base: TrainConfig) -> Space:
    """Everything `get` checks, plus: every config the space can propose is valid for `base`."""
    space = get(name_or_yaml_path)
    if space.source != "built-in":
        yaml_space.check(space, base)
    # Built-in spaces are valid for any valid base by construction (tested); the seed point
    # must be too, so check it either way.
    _, seed_overrides, _ = space.invert(base)
    base.replace(**seed_overrides).validate()
    return space


def define_by_run(name_or_space: str | Space, base: TrainConfig) -> Callable:
    """The one-argument `fn(trial)` OptunaSearch wants (picklable: Ray pickles the searcher)."""
    space = name_or_space if isinstance(name_or_space, Space) else get(name_or_space)
    return functools.partial(space, base=base)


def seed_defaults(base: TrainConfig, name_or_space: str | Space) -> dict:
    """The Optuna params (keyed by param name) with which the space reproduces `base`.

    Pass it as `points_to_evaluate=[...]` so the base recipe is the first trial. Where the
    base lies outside the space the nearest value is used and a warning says so.
    """
    space = name_or_space if isinstance(name_or_space, Space) else get(name_or_space)
    return space.seed(base)


def overrides_from_params(name_or_space: str | Space, params: dict, base: TrainConfig) -> dict:
    """TrainConfig overrides for given Optuna params (e.g. a FrozenTrial's `.params`)."""
    from optuna.trial import FixedTrial

    space = name_or_space if isinstance(name_or_space, Space) else get(name_or_space)
    return space(FixedTrial(params), base)


def overrides_from_config(config: dict) -> dict:
    """The TrainConfig fields of a Tune trial config (drops the `*_frac` search params)."""
    fields = set(field_names())
    return {key: value for key, value in config.items() if key in fields}


__all__ = ["Space", "check", "define_by_run", "get", "names", "overrides_from_config",
           "overrides_from_params", "seed_defaults", "unsearchable"]
