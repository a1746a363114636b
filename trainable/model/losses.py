"""Losses of the staged recipe: CE with label smoothing and class weights, focal loss on
tail-class samples, center loss, and the mixup/cutmix combination of them.

Everything is computed per sample first and averaged last. That is what lets mixup and
cutmix (two targets per image, weights lam and 1 - lam) work with the per-sample parts of
the recipe (class weights, focal loss on tail samples only) without soft-target tricks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# (1 - p_t) is clamped to this before the focal power: for gamma < 1 the derivative of
# (1 - p)^gamma is infinite at p == 1 (a saturated, correct prediction), and inf * 0 = NaN.
_FOCAL_EPS = 1e-12


def per_sample_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
    focal_gamma: float = 0.0,
    focal_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss of each sample, shape [N] (float32 even under AMP).

    - CE with label smoothing as in ``F.cross_entropy(label_smoothing=s)``:
      ``(1 - s) * (-log p_y) + s * mean_c(-log p_c)``.
    - Samples whose ``focal_mask`` is True get the focal loss instead:
      ``(1 - p_y)^gamma * CE`` where ``p_y`` is the softmax probability of the target
      (gamma = 0 gives exactly the non-focal loss).
    - Every sample, focal or not, is multiplied by ``class_weights[y]`` when given. The seed
      runs its focal loss with alpha=None, but there class weighting is a separate switch
      (--use-class-weights): dropping the weight exactly when focal turns on would cut the
      tail classes' share of the loss (their weights are the largest) at the very epoch
      meant to raise it, and would break "focal with gamma 0 changes nothing".

    The caller averages with a plain mean (``mixed_loss`` does): the class weights are
    normalised so that their mean over the training samples is 1, so a plain mean keeps the
    loss scale of unweighted CE; torch's weighted mean (sum w*l / sum w) would not combine
    linearly under mixup.
    """
    log_probs = F.log_softmax(logits.float(), dim=1)
    nll = -log_probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    loss = nll if smoothing == 0 else (1.0 - smoothing) * nll - smoothing * log_probs.mean(dim=1)
    if class_weights is not None:
        loss = loss * class_weights.to(device=loss.device, dtype=loss.dtype)[targets]
    if focal_mask is not None:
        p_target = torch.exp(-nll)
        factor = (1.0 - p_target).clamp_min(_FOCAL_EPS).pow(focal_gamma)
        loss = torch.where(focal_mask, factor * loss, loss)
    return loss


def mixed_loss(
    per_sample_fn: Callable[[torch.Tensor], torch.Tensor],
    targets_a: torch.Tensor,
    targets_b: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """``mean(lam * l(a) + (1 - lam) * l(b))`` for a batch mixed with weight ``lam``.

    ``per_sample_fn(targets) -> Tensor[N]`` closes over the logits and computes everything
    that depends on the target (class weight, focal mask) from the targets it is given, e.g.
    ``lambda t: per_sample_loss(logits, t, class_weights=w, focal_gamma=g, focal_mask=is_tail[t])``.
    With ``lam == 1`` (no mixing) the second term is not computed.
    """
    loss = per_sample_fn(targets_a)
    if lam < 1.0:
        loss = lam * loss + (1.0 - lam) * per_sample_fn(targets_b)
    return loss.mean()


class CenterLoss(nn.Module):
    """Center loss ``L = (1/N) * sum_i ||f_i - c_{y_i}||^2`` (the seed's formula).

    The factor is 1/N with no 1/2 (unlike Wen et al. 2016), so the gradients are
    ``dL/df_i = 2 (f_i - c_{y_i}) / N`` and ``dL/dc_k = -2/N * sum_{i: y_i = k} (f_i - c_k)``.
    The centers are an ``nn.Parameter`` learned by the same optimizer as the model (no
    separate center update rate), so they are in the state dict and the parameter groups.
    Initialised from N(0, 1) as in the common reference implementation.
    """

    def __init__(self, num_classes: int, feat_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        diff = features.float() - self.centers.float()[targets.long()]
        return diff.pow(2).sum(dim=1).mean()


def tail_classes(class_counts, fraction: float) -> np.ndarray:
    """Ids of the rarest classes being learnt: among the classes with at least one training image
    (C of them), the bottom ``round(fraction * C)`` by training count (at least 1; halves round
    up), ties broken by the lower class id. Returned sorted by id (int64); empty when no class
    has a training image.

    A class with no training image is not in the tail: nothing of it is learnt or focal-weighted,
    and counting it would make a 10-class dataset's tail 15 absent classes (tail_acc 0 forever).
    """
    counts = np.asarray(class_counts)
    present = np.flatnonzero(counts > 0)
    size = min(len(present), max(1, int(np.floor(fraction * len(present) + 0.5))))
    order = present[np.lexsort((present, counts[present]))]  # by count, then by id
    return np.sort(order[:size]).astype(np.int64)
