"""Losses against torch's CE and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainable.model.losses import CenterLoss, mixed_loss, per_sample_loss, tail_classes

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
TARGETS = torch.tensor([0, 1])


def _log_softmax_by_hand(row):
    norm = math.log(sum(math.exp(v) for v in row))
    return [v - norm for v in row]


def test_plain_and_smoothed_ce_match_torch():
    torch.manual_seed(0)
    logits, targets = torch.randn(8, 61), torch.randint(0, 61, (8,))
    assert torch.allclose(per_sample_loss(logits, targets), F.cross_entropy(logits, targets, reduction="none"))
    assert torch.allclose(per_sample_loss(logits, targets, smoothing=0.1),
                          F.cross_entropy(logits, targets, reduction="none", label_smoothing=0.1))


@pytest.mark.parametrize("smoothing", [0.0, 0.05])
def test_focal_gamma_zero_is_ce(smoothing):
    torch.manual_seed(1)
    logits, targets = torch.randn(8, 61), torch.randint(0, 61, (8,))
    mask = torch.tensor([True, False] * 4)
    weights = torch.rand(61) + 0.5
    plain = per_sample_loss(logits, targets, smoothing=smoothing, class_weights=weights)
    focal = per_sample_loss(logits, targets, smoothing=smoothing, class_weights=weights,
                            focal_gamma=0.0, focal_mask=mask)
    assert torch.allclose(plain, focal)


def test_smoothing_and_class_weights_by_hand():
    s, weights = 0.1, torch.tensor([2.0, 0.5, 1.0])
    got = per_sample_loss(LOGITS, TARGETS, smoothing=s, class_weights=weights)
    expected = []
    for row, y in zip(LOGITS.tolist(), TARGETS.tolist(), strict=True):
        logp = _log_softmax_by_hand(row)
        ce = (1 - s) * -logp[y] + s * sum(-v for v in logp) / 3
        expected.append(weights[y].item() * ce)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)


def test_focal_only_on_masked_samples_by_hand():
    gamma, mask = 1.5, torch.tensor([False, True])
    got = per_sample_loss(LOGITS, TARGETS, focal_gamma=gamma, focal_mask=mask)
    logp0 = _log_softmax_by_hand(LOGITS[0].tolist())[0]
    logp1 = _log_softmax_by_hand(LOGITS[1].tolist())[1]
    expected = [-logp0, (1 - math.exp(logp1)) ** gamma * -logp1]
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)


def test_focal_gradient_finite_on_saturated_prediction():
    logits = torch.tensor([[100.0, -100.0, -100.0]], requires_grad=True)
    loss = per_sample_loss(logits, torch.tensor([0]), focal_gamma=0.5, focal_mask=torch.tensor([True]))
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_mixed_loss():
    targets_b = torch.tensor([2, 0])
    fn = lambda t: per_sample_loss(LOGITS, t)  # noqa: E731
    lam = 0.3
    expected = (lam * fn(TARGETS) + (1 - lam) * fn(targets_b)).mean()
    assert torch.allclose(mixed_loss(fn, TARGETS, targets_b, lam), expected)
    assert torch.allclose(mixed_loss(fn, TARGETS, targets_b, 1.0), fn(TARGETS).mean())


def test_mixed_loss_masks_follow_each_target():
    tail = torch.tensor([False, False, True])  # class 2 is a tail class
    fn = lambda t: per_sample_loss(LOGITS, t, focal_gamma=2.0, focal_mask=tail[t])  # noqa: E731
    targets_b = torch.tensor([2, 2])
    got = mixed_loss(fn, TARGETS, targets_b, 0.5)
    ce_b = F.cross_entropy(LOGITS, targets_b, reduction="none")
    focal_b = (1 - torch.exp(-ce_b)) ** 2 * ce_b
    expected = (0.5 * F.cross_entropy(LOGITS, TARGETS, reduction="none") + 0.5 * focal_b).mean()
    assert torch.allclose(got, expected)


def test_center_loss_value_and_gradients():
    loss_fn = CenterLoss(num_classes=3, feat_dim=2)
    with torch.no_grad():
        loss_fn.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    features = torch.tensor([[1.0, 2.0], [3.0, 1.0], [0.0, 1.0]], requires_grad=True)
    targets = torch.tensor([0, 1, 1])
    loss = loss_fn(features, targets)
    # ||(1,2)||^2 = 5, ||(2,0)||^2 = 4, ||(-1,0)||^2 = 1; mean over N=3
    assert loss.item() == pytest.approx(10.0 / 3.0)
    loss.backward()
    expected_f = 2.0 / 3.0 * torch.tensor([[1.0, 2.0], [2.0, 0.0], [-1.0, 0.0]])
    assert torch.allclose(features.grad, expected_f)
    expected_c = -2.0 / 3.0 * torch.tensor([[1.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(loss_fn.centers.grad, expected_c)


def test_tail_classes():
    counts = np.arange(100, 161)  # class c has 100 + c samples: rarest are the lowest ids
    counts[60] = 1                # ...except class 60, now the rarest
    counts[[5, 3]] = 50           # a tie: the lower id first
    tails = tail_classes(counts, 0.25)
    assert len(tails) == 15       # round(0.25 * 61) = round(15.25)
    assert list(tails) == sorted([60, 3, 5, 0, 1, 2, 4, 6, 7, 8, 9, 10, 11, 12, 13])
    assert list(tail_classes(counts, 0.001)) == [60]   # at least one
    assert len(tail_classes(np.ones(61), 0.5)) == 31   # 30.5 rounds up
    assert list(tail_classes(np.ones(61), 3 / 61)) == [0, 1, 2]  # all tied: by id
    assert tail_classes(counts, 1.0).tolist() == list(range(61))


def test_tail_classes_cover_only_classes_with_training_images():
    # A 10-class dataset: the other 51 ids have no training image and are not "the rarest".
    counts = np.zeros(61, dtype=np.int64)
    learnt = [0, 5, 7, 12, 20, 33, 41, 50, 58, 60]
    counts[learnt] = [90, 3, 40, 2, 70, 8, 60, 5, 1, 30]
    assert tail_classes(counts, 0.25).tolist() == [5, 12, 58]  # round(0.25 * 10) = 3: counts 1, 2, 3
    assert tail_classes(counts, 0.001).tolist() == [58]        # at least one, and a real one
    assert tail_classes(counts, 1.0).tolist() == learnt
    assert tail_classes(np.zeros(61), 0.25).tolist() == []
