"""User-written search spaces: `--space my_space.yaml`.

    # TrainConfig field -> how to sample it
    lr:            {type: loguniform, low: 1.0e-5, high: 1.0e-2}
    dropout:       {type: float, low: 0.0, high: 0.5}
    stage2_epoch:  {type: int, low: 5, high: 12}
    stage3_epoch:  {type: int, low: 15, high: 30}
    backbone:      {type: categorical, choices: [resnet50, efficientnet_b0]}

The Optuna parameters are named after the fields. Epoch values are absolute (not scaled to
--epochs). Fields that set up the search rather than a trial's training (data paths, image
sizes, epochs, device, ...: see UNSEARCHABLE) are refused with the flag to use instead.
Ranges of ordered switches must not overlap: `check(space, base)` rejects a space that could
produce an invalid config, so every trial it proposes can run.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import yaml

from search_spaces._params import Cat, Num, Space
from trainable.config import TrainConfig, coerce, field_names, field_types, flag
from trainable.errors import UserError, yaml_error_line

TYPES = ("int", "float", "loguniform", "categorical")
KEYS = {"int": {"low", "high"}, "float": {"low", "high"}, "loguniform": {"low", "high"},
        "categorical": {"choices"}}

_DATA = ("every trial trains on the data the search decodes once, before the trials, from the base "
         "config; set {flag} for the whole search")
_CACHE = ("the images are decoded once, before the trials, at the base config's largest size; "
          "set {flag} for the whole search (one search per size to compare sizes)")
_NO_EFFECT = "it does not change what a trial learns; set {flag} for the whole search"
# Fields a space must not tune (field -> why, and what to do instead). Every message is
# "<field>: cannot be searched: <why>; <instead>".
UNSEARCHABLE = {
    # The dataset: the driver decodes it once from the base paths and all trials share it.
    **{name: _DATA for name in ("train_dir", "val_dir", "train_meta", "val_meta", "class_weights", "demo")},
    # The decoded-image cache is built once at max(image_size, progressive_image_size) of the base;
    # a larger trial size would be upscaled from it, and a smaller one would not match its retrain.
    "image_size": _CACHE,
    "progressive_image_size": _CACHE,
    # ASHA ranks trials at the same epoch, which is only fair when they all run one schedule
    # length (and its max_t is the base's --epochs).
    "epochs": "ASHA compares trials at the same epoch, which is only fair when all run the same "
              "number of epochs; set {flag} for the whole search (one search per length to compare)",
    # Weights fit one backbone; a space cannot tie a file to the backbone it samples.
    "pretrained_path": "a weights file fits one backbone; set {flag} (or --no-pretrained) for the whole search",
    # Trials write into the search's trial directories; retrain --save-dir names the final run's.
    "save_dir": "trials write into the search's experiment directory; pass --save-dir to retrain instead",
    # A trial resumes from Tune's checkpoints; a search resumes with run_search.py --resume NAME.
    "resume": "a trial continues from its own Tune checkpoint; continue a search with run_search.py --resume NAME",
    # The trial's device follows the resources it gets (--gpus-per-trial), not a sampled value.
    "device": "a trial runs where its resources place it; set {flag} / --gpus-per-trial for the whole search",
    # Decoding happens once on the driver, before the trials.
    "num_workers": _NO_EFFECT,
    # Logging and checkpoint cadence, not training knobs.
    "log_interval": _NO_EFFECT,
    "save_freq": _NO_EFFECT,
    # Tuning the seed picks a lucky draw, not a better recipe.
    "seed": "tuning the random seed picks a lucky draw, not a better recipe; set {flag} for the whole search",
}


def unsearchable(name: str) -> str | None:
    """Why a search space must not tune this TrainConfig field (one line), or None when it may."""
    why = UNSEARCHABLE.get(name)
    return None if why is None else f"{name}: cannot be searched: " + why.format(flag=flag(name))


def load(path: str | Path) -> Space:
    """Read and validate a YAML space (structure and types; see `check` for the ranges)."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise UserError(f"{where}: search space file not found")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = yaml_error_line(exc)
        raise UserError(f"{where}: not valid YAML" + (f" (line {line})" if line else "")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: cannot read the search space ({exc})") from None
    if not isinstance(spec, dict) or not spec:
        raise UserError(f"{where}: expected a mapping of TrainConfig field -> "
                        f"{{type: int|float|loguniform|categorical, ...}}")
    decls = tuple(_decl(where, str(name), entry) for name, entry in spec.items())
    return Space(path.stem, decls, source=where)


def _decl(where: str, name: str, entry) -> Num | Cat:
    def bad(why: str):
        return UserError(f"{where}: {name}: {why}")

    if name not in field_names():
        raise bad("not a TrainConfig field")
    if unsearchable(name):
        raise UserError(f"{where}: {unsearchable(name)}")
    if not isinstance(entry, dict):
        raise bad("expected {type: ..., low: ..., high: ...} or {type: categorical, choices: [...]}")
    kind = entry.get("type")
    if kind not in TYPES:
        raise bad(f"type must be one of {', '.join(TYPES)} (got {kind!r})")
    given = set(entry) - {"type"}
    missing, unknown = KEYS[kind] - given, given - KEYS[kind]
    if missing:
        raise bad(f"type {kind} needs {', '.join(sorted(missing))}")
    if unknown:
        raise bad(f"unexpected key(s) {', '.join(sorted(unknown))} for type {kind}")

    field_type = field_types()[name]
    if kind == "categorical":
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise bad("choices must be a non-empty list")
        try:
            values = tuple(coerce(name, c, f"{where}: {name}") for c in choices)
        except UserError as exc:
            raise UserError(str(exc)) from None
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise bad(f"choices must be finite numbers (got {list(choices)})")
        if len(set(values)) != len(values):
            raise bad("choices contain duplicates")
        return Cat(name, values)

    if field_type is int and kind == "float":
        raise bad("is an integer field: use type int (or loguniform)")
    if field_type not in (int, float):
        raise bad(f"is a {field_type.__name__} field: use type categorical")
    if field_type is float and kind == "int":
        raise bad("is a float field: use type float (or loguniform)")
    low, high = _number(bad, "low", entry["low"]), _number(bad, "high", entry["high"])
    integer = field_type is int
    if integer and not (float(low).is_integer() and float(high).is_integer()):
        raise bad("low and high must be whole numbers for an integer field")
    if low > high:
        raise bad(f"low ({low}) is above high ({high})")
    if kind == "loguniform" and low <= 0:
        raise bad(f"loguniform needs low > 0 (got {low})")
    if integer:
        return Num(name, int(low), int(high), log=kind == "loguniform", integer=True)
    return Num(name, float(low), float(high), log=kind == "loguniform")


def _number(bad, key: str, value) -> float:
    # YAML 1.1 reads `1e-5` (no dot) as a string: accept any number-like string.
    if isinstance(value, bool):
        raise bad(f"{key} must be a number (got {value!r})")
    try:
        number = float(value) if isinstance(value, str) else value + 0
    except (TypeError, ValueError):
        raise bad(f"{key} must be a number (got {value!r})") from None
    if not math.isfinite(number):  # Optuna cannot sample towards .inf, and .nan orders nothing
        raise bad(f"{key} must be a finite number (got {value!r})")
    return number


def _corners(decl: Num | Cat) -> tuple:
    if isinstance(decl, Cat):
        return decl.choices
    return (decl.low, decl.high)


def check(space: Space, base: TrainConfig) -> None:
    """Reject a space whose ranges allow a config that fails validation with this base.

    TrainConfig's constraints bound one field or order two, so it suffices to check every
    field's extremes and every pair's corners, with the other searched fields at a reference
    point inside the space: the base clamped into it (valid whenever the space is).
    """
    _, reference, _ = space.invert(base)
    _try(space, base, reference, {}, "the space")
    decls = space.decls
    for decl in decls:
        for value in _corners(decl):
            _try(space, base, reference, {decl.field: value}, decl.field)
    for first, second in itertools.combinations(decls, 2):
        for a, b in itertools.product(_corners(first), _corners(second)):
            _try(space, base, reference, {first.field: a, second.field: b},
                 f"{first.field} and {second.field}")


def _try(space: Space, base: TrainConfig, reference: dict, overrides: dict, what: str) -> None:
    try:
        base.replace(**{**reference, **overrides}).validate()
    except UserError as exc:
        # One searched value: the error already names it (--flag=value); a pair needs both shown.
        shown = "" if len(overrides) == 1 else (", ".join(f"{k}={v}" for k, v in overrides.items())
                                                 or "its reference point") + ": "
        hint = "narrow it so ordered switches do not overlap" if "out of order" in str(exc) else "narrow it"
        raise UserError(f"{space.source}: {what}: the range allows an invalid config "
                        f"({shown}{exc}); {hint}") from None
