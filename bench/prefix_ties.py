"""Where can a rung rank a space's trials? `python -m bench.prefix_ties [--space stage_epochs] [--epochs 12]`

Two trials whose prefix keys (trainable.train.prefix: seed, knobs, plan() and the late knobs it switches on)
are equal at epoch r have equal states there, so a rung at r cannot rank them. This samples --trials
configurations of a space as a search starts (the seed point, then Optuna's RandomSampler; --seeds
sampler seeds) on the demo's base config and prints, per rung epoch r, the fraction of trials tied
with another, and the epoch `run_search.py` places its first rung at (tuner.rungs). No training: seconds.
"""

from __future__ import annotations

import argparse
import statistics

from trainable.config import SEED_EPOCHS, TrainConfig, scale_schedule


def demo_base(epochs: int) -> TrainConfig:
    from trainable.cli_config import DEMO_RECIPE

    values = {**TrainConfig().to_dict(), **DEMO_RECIPE}
    return TrainConfig.from_dict({**scale_schedule(values, SEED_EPOCHS, epochs), "epochs": epochs})


def main(argv: list[str] | None = None) -> None:
    from tuner.rungs import TIE_LIMIT, first_ranking_epoch, tie_profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--space", default="stage_epochs")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    base = demo_base(args.epochs)
    runs = tie_profile(args.space, base, args.trials, args.seeds)
    print(f"space {args.space}, {args.trials} trials, {args.epochs} epochs, sampler seeds 0..{args.seeds - 1}: "
          f"fraction of trials tied with another at each rung (median, min-max)")
    for rung in range(1, args.epochs + 1):
        values = [run[rung - 1] for run in runs]
        print(f"  rung {rung:3d}: {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
    first = first_ranking_epoch(args.space, base, args.trials, args.seeds)
    print(f"first epoch with a median of at most {TIE_LIMIT:.0%} tied (the search's first rung, "
          f"unless warmup ends later): {first}")


if __name__ == "__main__":
    main()
