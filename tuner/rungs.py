"""Where the first rung goes: the first epoch at which a space's trials have stopped computing the same thing.

Two trials whose prefix keys (trainable.train.prefix) are equal at epoch r have equal states there, so
a rung at r can only rank them by the tie-break. Before a search starts, `first_ranking_epoch`
samples the space as the search would begin (the seed point, then Optuna's RandomSampler, a few
sampler seeds) and returns the first epoch at which at most TIE_LIMIT of the sampled trials still
share their prefix with another. No training: milliseconds. `--grace-period` overrides it.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter

from trainable.config import TrainConfig
from trainable.train.prefix import prefix_key

TIE_LIMIT = 0.10     # the share of trials that may tie at the first rung
SAMPLER_SEEDS = 5    # sampled searches the median is taken over


def sampled_configs(space, base: TrainConfig, trials: int, seed: int) -> list[TrainConfig]:
    """The configs a search over `space` would start with: its seed point, then random samples."""
    import optuna

    from tuner.prepare import resolve_space, seed_point

    logging.getLogger("optuna").setLevel(logging.WARNING)
    fn = resolve_space(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    point = seed_point(space, base)
    if point:
        study.enqueue_trial(point)
    configs = []
    for _ in range(trials):
        trial = study.ask()
        configs.append(base.replace(**fn(trial, base)))
        study.tell(trial, 0.0)
    return configs


def tied_fraction(configs: list[TrainConfig], epoch: int) -> float:
    """The share of configs whose state at `epoch` equals another config's."""
    counts = Counter(prefix_key(cfg, epoch) for cfg in configs)
    return sum(n for n in counts.values() if n > 1) / max(len(configs), 1)


def tie_profile(space, base: TrainConfig, trials: int, seeds: int = SAMPLER_SEEDS) -> list[list[float]]:
    """Per sampler seed, the tied fraction at each epoch 1..base.epochs."""
    runs = []
    for seed in range(seeds):
        configs = sampled_configs(space, base, trials, seed)
        runs.append([tied_fraction(configs, epoch) for epoch in range(1, base.epochs + 1)])
    return runs


def first_ranking_epoch(space, base: TrainConfig, trials: int, seeds: int = SAMPLER_SEEDS) -> int:
    """The first epoch whose median tied fraction is at most TIE_LIMIT (the last epoch if none is)."""
    runs = tie_profile(space, base, max(trials, 2), seeds)
    for epoch in range(1, base.epochs + 1):
        if statistics.median(run[epoch - 1] for run in runs) <= TIE_LIMIT:
            return epoch
    return base.epochs
