"""Where can a rung rank a space's trials? `python -m bench.prefix_ties [--space stage_epochs] [--epochs 12]`

Two trials with the same seed, non-schedule knobs and plan() for epochs 0..r-1 reach the same state
at epoch r, so a rung at r cannot rank them. This samples --trials configurations of a space (Optuna's
RandomSampler, --seeds sampler seeds) on the demo's base config and prints, per rung epoch r, the
fraction of trials whose whole config-and-plan prefix equals another trial's: no training, seconds.
A non-schedule knob counts as a difference from epoch 0 (a lower bound on ties for knobs such as
focal_gamma that act only later; the exact key a forked checkpoint would need).
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter

from trainable.config import SEED_EPOCHS, TrainConfig, scale_schedule
from trainable.schedule import plan


def demo_base(epochs: int) -> TrainConfig:
    from trainable.cli_config import DEMO_RECIPE

    values = {**TrainConfig().to_dict(), **DEMO_RECIPE}
    return TrainConfig.from_dict({**scale_schedule(values, SEED_EPOCHS, epochs), "epochs": epochs})


def prefix_key(cfg: TrainConfig, overrides: dict, rung: int) -> tuple:
    """What decides a trial's state at epoch `rung`: its non-schedule knobs and its plans before it."""
    from trainable.config import SCHEDULE_FIELDS

    knobs = tuple(sorted((k, v) for k, v in overrides.items() if k not in SCHEDULE_FIELDS))
    return knobs + tuple(plan(cfg, epoch) for epoch in range(rung))


def tied_fractions(space: str, base: TrainConfig, trials: int, seed: int) -> list[float]:
    """Per rung epoch 1..epochs: the fraction of `trials` sampled trials that tie with another."""
    import optuna

    import search_spaces

    fn = search_spaces.get(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    sampled = []
    for _ in range(trials):
        trial = study.ask()
        overrides = fn(trial, base)
        sampled.append((base.replace(**overrides), overrides))
        study.tell(trial, 0.0)
    fractions = []
    for rung in range(1, base.epochs + 1):
        counts = Counter(prefix_key(cfg, overrides, rung) for cfg, overrides in sampled)
        fractions.append(sum(n for n in counts.values() if n > 1) / trials)
    return fractions


def main(argv: list[str] | None = None) -> None:
    import optuna

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--space", default="stage_epochs")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = demo_base(args.epochs)
    runs = [tied_fractions(args.space, base, args.trials, seed) for seed in range(args.seeds)]
    print(f"space {args.space}, {args.trials} trials, {args.epochs} epochs, sampler seeds 0..{args.seeds - 1}: "
          f"fraction of trials tied with another at each rung (median, min-max)")
    for rung in range(1, args.epochs + 1):
        values = [run[rung - 1] for run in runs]
        print(f"  rung {rung:3d}: {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main()
