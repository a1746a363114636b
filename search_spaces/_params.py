"""Declarative building blocks shared by every search space.

A space is a list of parameter declarations evaluated in order. The same list drives
sampling (a define-by-run function for Optuna), the inverse (`seed`: the Optuna params that
reproduce a base config, for points_to_evaluate) and documentation.

Schedule epochs are `Offset`s: a fraction in a *fixed* range placed between an anchor
(an earlier switch point, or 0) and a bound (a later one, or --epochs). The fixed ranges keep
multivariate TPE multivariate, the fractions scale to any --epochs, and the anchors make every
sample respect the stage order by construction.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trainable.config import TrainConfig

Bound = float | Callable[[TrainConfig], float]


def _resolve(value: Bound, base: TrainConfig) -> float:
    return value(base) if callable(value) else value


@dataclass(frozen=True)
class Num:
    """A numeric field sampled directly; the Optuna param is named after the field."""

    field: str
    low: Bound
    high: Bound
    log: bool = False
    integer: bool = False
    when: str | None = None  # only sampled when this (bool) field is true in the overrides/base

    @property
    def param(self) -> str:
        return self.field

    def bounds(self, base: TrainConfig) -> tuple[float, float]:
        return _resolve(self.low, base), _resolve(self.high, base)

    def sample(self, trial, base: TrainConfig, values: dict) -> None:
        low, high = self.bounds(base)
        if self.integer:
            values[self.field] = trial.suggest_int(self.param, int(low), int(high), log=self.log)
        else:
            values[self.field] = trial.suggest_float(self.param, float(low), float(high), log=self.log)

    def invert(self, base: TrainConfig, values: dict) -> tuple[Any, bool]:
        low, high = self.bounds(base)
        target = getattr(base, self.field)
        param = min(max(target, low), high)
        param = int(param) if self.integer else float(param)
        values[self.field] = param
        return param, param == target


@dataclass(frozen=True)
class Cat:
    """A categorical field; the Optuna param is named after the field."""

    field: str
    choices: tuple
    when: str | None = None

    @property
    def param(self) -> str:
        return self.field

    def sample(self, trial, base: TrainConfig, values: dict) -> None:
        values[self.field] = trial.suggest_categorical(self.param, list(self.choices))

    def invert(self, base: TrainConfig, values: dict) -> tuple[Any, bool]:
        target = getattr(base, self.field)
        if target in self.choices:
            values[self.field] = target
            return target, True
        values[self.field] = self.choices[0]
        return None, False  # not representable: leave the param out of the seed point


@dataclass(frozen=True)
class Offset:
    """A schedule epoch = anchor + round(fraction * (bound - anchor)).

    anchor: the value of the field `after` (+1 when `strict`), or 0.
    bound:  the value of the field `until`, or --epochs, minus `reserve` (room that a later,
            strictly ordered switch needs).
    """

    field: str
    low: float
    high: float
    after: str | None = None
    until: str | None = None
    strict: bool = False
    reserve: int = 0
    when: str | None = None

    @property
    def param(self) -> str:
        # stage2_epoch -> stage2_frac, smoothing_decay_epoch1 -> smoothing_decay1_frac
        return self.field.replace("_epoch", "") + "_frac"

    def span(self, base: TrainConfig, values: dict) -> tuple[int, int]:
        def current(name: str) -> int:
            return values[name] if name in values else getattr(base, name)

        anchor = current(self.after) + int(self.strict) if self.after else 0
        bound = (current(self.until) if self.until else base.epochs) - self.reserve
        return anchor, max(anchor, bound)

    def place(self, fraction: float, base: TrainConfig, values: dict) -> int:
        anchor, bound = self.span(base, values)
        return anchor + int(math.floor(fraction * (bound - anchor) + 0.5))

    def sample(self, trial, base: TrainConfig, values: dict) -> None:
        fraction = trial.suggest_float(self.param, self.low, self.high)
        values[self.field] = self.place(fraction, base, values)

    def invert(self, base: TrainConfig, values: dict) -> tuple[Any, bool]:
        target = getattr(base, self.field)
        anchor, bound = self.span(base, values)
        fraction = (target - anchor) / (bound - anchor) if bound > anchor else self.low
        fraction = min(max(fraction, self.low), self.high)
        placed = self.place(fraction, base, values)
        values[self.field] = placed
        return fraction, placed == target


Decl = Num | Cat | Offset


def _active(decl: Decl, base: TrainConfig, values: dict) -> bool:
    if decl.when is None:
        return True
    return bool(values.get(decl.when, getattr(base, decl.when)))


@dataclass(frozen=True)
class Space:
    """A named search space: callable as a define-by-run function `(trial, base) -> overrides`."""

    name: str
    decls: tuple[Decl, ...]
    source: str = "built-in"

    def __call__(self, trial, base: TrainConfig) -> dict:
        values: dict = {}
        for decl in self.decls:
            if _active(decl, base, values):
                decl.sample(trial, base, values)
        return values

    @property
    def fields(self) -> list[str]:
        return [d.field for d in self.decls]

    @property
    def param_names(self) -> list[str]:
        return [d.param for d in self.decls]

    def invert(self, base: TrainConfig) -> tuple[dict, dict, list[str]]:
        """(Optuna params, the overrides they produce, base settings they cannot reproduce)."""
        params: dict = {}
        values: dict = {}
        missed: list[str] = []
        for decl in self.decls:
            if not _active(decl, base, values):
                continue
            param, exact = decl.invert(base, values)
            if param is not None:
                params[decl.param] = param
            if not exact:
                missed.append(f"{decl.field}={getattr(base, decl.field)}")
        return params, values, missed

    def seed(self, base: TrainConfig) -> dict:
        """Optuna params that make this space reproduce `base` (warns about what it cannot)."""
        params, _, missed = self.invert(base)
        if missed:
            warnings.warn(
                f"search space {self.name!r} cannot reproduce the base config's "
                f"{', '.join(missed)}: the seed trial uses the nearest values in the space",
                stacklevel=3,
            )
        return params


def merge(name: str, spaces: Sequence[Space]) -> Space:
    """Union of spaces in order; a declaration shared by two spaces is kept once."""
    decls: list[Decl] = []
    for space in spaces:
        for decl in space.decls:
            if decl not in decls:
                decls.append(decl)
    return Space(name, tuple(decls))
