"""Epoch orders: the seed's weighted random sampler (weight 1/count^power per sample) or a
plain shuffle. Both draw from the generator passed in, so a restored generator replays the
same order."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import RandomSampler, WeightedRandomSampler


def sample_weights(labels, power: float = 0.5) -> np.ndarray:
    """Per-sample weight 1 / count(label)^power (float64): power 0.5 = the seed's inverse
    square-root frequency, 1.0 = full inverse frequency, 0 = uniform."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    return 1.0 / counts[labels].astype(np.float64) ** power


def epoch_order(labels, weighted: bool, generator: torch.Generator, power: float = 0.5) -> torch.Tensor:
    """N sample indices (LongTensor) for one epoch: drawn with replacement by
    ``sample_weights`` when ``weighted`` (rare classes oversampled), else a permutation."""
    n = len(labels)
    if weighted:
        weights = torch.as_tensor(sample_weights(labels, power))
        sampler = WeightedRandomSampler(weights, n, replacement=True, generator=generator)
    else:
        sampler = RandomSampler(range(n), generator=generator)
    return torch.as_tensor(list(sampler), dtype=torch.long)
