"""Sampler weights and epoch orders."""

from __future__ import annotations

import numpy as np
import torch

from trainable.train.sampler import epoch_order, sample_weights


def test_sample_weights_inverse_sqrt_count():
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    assert np.allclose(sample_weights(labels), [0.5] * 4 + [1.0] + [1 / np.sqrt(2)] * 2)
    assert np.allclose(sample_weights(labels, power=1.0), [0.25] * 4 + [1.0] + [0.5] * 2)
    assert np.allclose(sample_weights(labels, power=0.0), 1.0)


def test_weighted_order_oversamples_rare_classes():
    labels = np.array([0] * 900 + [1] * 100)
    order = epoch_order(labels, True, torch.Generator().manual_seed(0))
    assert order.dtype == torch.long and order.shape == (1000,)
    share = (labels[order.numpy()] == 1).mean()
    # expected share: 100/sqrt(100) / (900/sqrt(900) + 100/sqrt(100)) = 10 / 40 = 0.25
    assert 0.2 < share < 0.3


def test_plain_order_is_a_permutation():
    labels = np.array([0] * 90 + [1] * 10)
    order = epoch_order(labels, False, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(100))
    assert order.tolist() != list(range(100))


def test_orders_are_deterministic_given_the_generator():
    labels = np.random.default_rng(0).integers(0, 61, 500)
    for weighted in (True, False):
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        first = epoch_order(labels, weighted, g1)
        assert torch.equal(first, epoch_order(labels, weighted, g2))
        assert not torch.equal(first, epoch_order(labels, weighted, g1))  # the generator advanced
