"""The training objective for one batch, as the plan prescribes it.

CE with the plan's label smoothing and the class weights; focal loss on tail-class samples
once the plan says so (on every sample with --loss-type focal); crop and severity heads for
multitask; center loss once active. Mixup/CutMix are handled per sample as
lam * loss(y_a) + (1 - lam) * loss(y_b), which keeps tail focal and class weights exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainable.config import TrainConfig
from trainable.model.losses import mixed_loss, per_sample_loss
from trainable.train.schedule import EpochPlan


@dataclass
class BatchTargets:
    labels: torch.Tensor
    crops: torch.Tensor
    severities: torch.Tensor

    def permuted(self, perm: torch.Tensor | None) -> BatchTargets:
        if perm is None:
            return self
        return BatchTargets(self.labels[perm], self.crops[perm], self.severities[perm])


class Objective:
    def __init__(self, cfg: TrainConfig, class_weights: torch.Tensor | None, tail_lookup: torch.Tensor):
        self.cfg = cfg
        self.class_weights = class_weights  # [61] or None
        self.tail_lookup = tail_lookup      # bool [61]: is this class a tail class

    def __call__(self, outputs: dict, targets: BatchTargets, perm: torch.Tensor | None, lam: float,
                 plan: EpochPlan, center_loss: torch.nn.Module | None) -> torch.Tensor:
        cfg = self.cfg
        other = targets.permuted(perm)
        logits = outputs["logits"].float()

        def main_loss(labels: torch.Tensor) -> torch.Tensor:
            if cfg.loss_type == "focal":
                focal_mask = torch.ones_like(labels, dtype=torch.bool)
            elif plan.focal_tail:
                focal_mask = self.tail_lookup[labels]
            else:
                focal_mask = None
            return per_sample_loss(logits, labels, smoothing=plan.label_smoothing,
                                   class_weights=self.class_weights, focal_gamma=cfg.focal_gamma,
                                   focal_mask=focal_mask)

        loss = mixed_loss(main_loss, targets.labels, other.labels, lam)
        if "crop_logits" in outputs:
            crop_logits = outputs["crop_logits"].float()
            severity_logits = outputs["severity_logits"].float()
            aux = mixed_loss(lambda y: F.cross_entropy(crop_logits, y, reduction="none"),
                             targets.crops, other.crops, lam)
            aux = aux + mixed_loss(lambda y: F.cross_entropy(severity_logits, y, reduction="none"),
                                   targets.severities, other.severities, lam)
            loss = loss + cfg.aux_loss_weight * aux
        if plan.center_loss and center_loss is not None:
            features = outputs["features"].float()
            center = lam * center_loss(features, targets.labels)
            if perm is not None and lam < 1.0:
                center = center + (1.0 - lam) * center_loss(features, other.labels)
            loss = loss + cfg.center_loss_weight * center
        return loss
