"""Everything checked before Ray starts: experiment directory, data, search space, hooks.

A problem here is a UserError (one line, exit 2) and nothing has been written: no
experiment directory, no Ray session, no tracking run.
"""

from __future__ import annotations

import importlib
import logging

from trainable.config import TrainConfig
from trainable.errors import UserError
from tuner.experiment import check_new_experiment, read_meta

SPACE_PROBES = 5  # sampled configurations checked against TrainConfig.validate() before the search


def resolve_space(space):
    """The define-by-run function `fn(trial, base) -> overrides` for a --space value.

    A registered name or a YAML path goes to search_spaces.get(); `package.module:function`
    names a Python function (custom spaces, tests); a callable is used as it is.
    """
    if callable(space):
        return space
    if ":" in space and not space.endswith((".yaml", ".yml")):
        module_name, _, attr = space.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"--space {space}: cannot import it ({exc})") from None
    import search_spaces

    return search_spaces.get(space)


def seed_point(space, base: TrainConfig) -> dict | None:
    """The Optuna parameters that reproduce the seed recipe (evaluated as the first trial)."""
    if callable(space) or (":" in space and not space.endswith((".yaml", ".yml"))):
        fn = resolve_space(space)
        defaults = getattr(fn, "seed_defaults", None)
        return defaults(base) if defaults else None
    import search_spaces

    return search_spaces.seed_defaults(base, space)


def check_space(space, base: TrainConfig, seed: int = 0) -> None:
    """Sample the space a few times (and its seed point) and validate every resulting config."""
    import optuna

    fn = resolve_space(space)
    label = space if isinstance(space, str) else getattr(space, "__name__", repr(space))
    if isinstance(space, str) and ":" not in space:
        import search_spaces

        try:
            search_spaces.check(space, base)
        except UserError as exc:
            raise UserError(f"--space {label}: {exc}") from None
    logging.getLogger("optuna").setLevel(logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    point = seed_point(space, base)
    if point:
        study.enqueue_trial(point)
    for index in range(SPACE_PROBES + (1 if point else 0)):
        trial = study.ask()
        try:
            overrides = fn(trial, base)
            if not isinstance(overrides, dict):
                raise UserError(f"returned {type(overrides).__name__}, not a dict of TrainConfig overrides")
            base.replace(**overrides).validate()
        except UserError as exc:
            what = "its seed-defaults point" if point and index == 0 else "a sampled configuration"
            raise UserError(f"--space {label}: {what} is invalid with this base config "
                            f"(--epochs {base.epochs}): {exc}") from None
        study.tell(trial, 0.0)


def check_dataset(base: TrainConfig) -> None:
    """The data the base config points at (trainable.data.validate_data: no decoding, no writes)."""
    from pathlib import Path

    from trainable.data import validate_data

    if not base.demo and not Path(base.train_dir).is_dir():
        raise UserError(f"no dataset at --train-dir {base.train_dir}: point --train-dir, --val-dir, "
                        f"--train-meta and --val-meta at data in the seed layout, or use --demo for the "
                        f"built-in synthetic data")
    validate_data(base)


def prepare_search(settings, hooks) -> None:
    """Check everything a search needs; raise UserError on the first problem. Writes nothing."""
    if settings.resume:
        read_meta(settings.storage_path, settings.name)
    else:
        check_new_experiment(settings.storage_path, settings.name)
    check_dataset(settings.base)
    if not settings.resume:
        check_space(settings.space, settings.base, seed=settings.seed)
    if settings.address is None:
        check_local_devices(settings)
    for hook in hooks:
        hook.validate(settings)
    check_model(settings)  # last: it imports torch + timm


def check_model(settings) -> None:
    """The base config's model builds, as `python -m trainable` checks before it writes: an unknown
    --backbone, a --pretrained-path that is not a weights file or weights that are neither cached
    nor downloadable would otherwise fail every trial after Ray started. Costs the driver the
    torch + timm import (seconds; a search takes hours). On a cluster (--address) only the
    backbone is checked: the nodes, not this machine, hold the weights."""
    from trainable.models import build_model

    base = settings.base
    build_model(base if settings.address is None else base.replace(pretrained=False, pretrained_path=None))


def check_local_devices(settings) -> None:
    """An explicit GPU request on this machine that it cannot meet (imports torch only then)."""
    device, gpus = settings.base.device, settings.gpus_per_trial
    if device not in ("cuda", "mps") and not gpus:
        return
    from trainable.devices import mps_available, select_device

    if device in ("cuda", "mps"):
        select_device(device)  # UserError naming the flag when it is not there
    import torch

    if gpus and device != "cpu" and not torch.cuda.is_available() and not mps_available():
        raise UserError(f"--gpus-per-trial {gpus:g}: this machine has no GPU; drop the flag, or use "
                        f"--address to run on a cluster with GPUs")
