"""The staged recipe as data: plan(cfg, epoch) says what every switch-point means for an epoch.

The loop applies plans and holds no `if epoch == 25` of its own, so the timeline is tested
here, row by row, without training anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainable.config import TrainConfig

STAGE_NAMES = {1: "head", 2: "partial", 3: "full"}
STAGE2_LR_BUMP = 1.2   # seed: "pg['lr'] = pg['lr'] * 1.2" at stage2_epoch
LR_RESTART_SCALE = 0.4  # seed: "Epoch 25: lr = lr x 0.4" (0.48 of base with the bump)
SMOOTHING_DECAY = 0.4   # seed: 0.05 -> 0.02 at smoothing_decay_epoch1 (x0.4), -> 0 at epoch2


@dataclass(frozen=True)
class EpochPlan:
    epoch: int                # 0-based
    stage: int                # 1 head only, 2 + backbone's last block, 3 everything
    lr_scale: float           # multiplies the scheduler's LR
    warmup: bool              # inside the linear warmup
    mixup_alpha: float
    cutmix_alpha: float
    label_smoothing: float
    use_sampler: bool         # weighted (1/sqrt(count)) sampling instead of shuffling
    image_size: int
    focal_tail: bool          # focal loss on tail-class samples
    light_aug: bool           # final "clean" phase: light augmentation
    cosine_head: bool         # cosine classifier active
    center_loss: bool         # center loss active

    @property
    def stage_name(self) -> str:
        return STAGE_NAMES[self.stage]


def plan(cfg: TrainConfig, epoch: int) -> EpochPlan:
    """Everything the staged recipe prescribes for 0-based `epoch` of a run configured by cfg."""
    if epoch < cfg.stage2_epoch:
        stage = 1
    elif epoch < cfg.stage3_epoch:
        stage = 2
    else:
        stage = 3
    if cfg.model_type == "fewshot" and cfg.fewshot_freeze_backbone:
        stage = 1  # few-shot keeps its backbone frozen for the whole run

    lr_scale = 1.0
    if epoch >= cfg.stage2_epoch:
        lr_scale *= STAGE2_LR_BUMP
    if epoch >= cfg.lr_restart_epoch:
        lr_scale *= LR_RESTART_SCALE

    # Mixup decays proportionally (0.4 -> 0.2 -> 0.1 -> 0 with the seed's alpha).
    if epoch < cfg.mixup_decay_epoch1:
        mixup_alpha = cfg.mixup_alpha
    elif epoch < cfg.mixup_decay_epoch2:
        mixup_alpha = cfg.mixup_alpha / 2
    elif epoch < cfg.mixup_disable_epoch:
        mixup_alpha = cfg.mixup_alpha / 4
    else:
        mixup_alpha = 0.0

    if epoch < cfg.smoothing_decay_epoch1:
        smoothing = cfg.label_smoothing
    elif epoch < cfg.smoothing_decay_epoch2:
        smoothing = cfg.label_smoothing * SMOOTHING_DECAY
    else:
        smoothing = 0.0

    feature_phase = epoch >= cfg.center_update_epoch
    return EpochPlan(
        epoch=epoch,
        stage=stage,
        lr_scale=lr_scale,
        warmup=epoch < cfg.warmup_epochs,
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cfg.cutmix_alpha if epoch < cfg.cutmix_disable_epoch else 0.0,
        label_smoothing=smoothing,
        use_sampler=cfg.balance_sampler and epoch < cfg.disable_sampler_epoch,
        image_size=cfg.progressive_image_size if epoch >= cfg.progressive_resize_epoch else cfg.image_size,
        focal_tail=epoch >= cfg.tail_focal_epoch,
        light_aug=epoch >= cfg.final_clean_epoch,
        cosine_head=cfg.use_cosine_classifier and feature_phase,
        center_loss=cfg.use_center_loss and feature_phase,
    )


def timeline(cfg: TrainConfig) -> list[EpochPlan]:
    return [plan(cfg, e) for e in range(cfg.epochs)]


def describe(cfg: TrainConfig) -> str:
    """One line per switch-point, for the console and the saved config."""
    parts = [
        f"stage2@{cfg.stage2_epoch}",
        f"stage3@{cfg.stage3_epoch}",
        f"warmup<{cfg.warmup_epochs}",
        f"mixup/2@{cfg.mixup_decay_epoch1}",
        f"mixup/4@{cfg.mixup_decay_epoch2}",
        f"mixup-off@{cfg.mixup_disable_epoch}",
        f"cutmix-off@{cfg.cutmix_disable_epoch}",
        f"ls*0.4@{cfg.smoothing_decay_epoch1}",
        f"ls-off@{cfg.smoothing_decay_epoch2}",
        f"sampler-off@{cfg.disable_sampler_epoch}",
        f"tail-focal@{cfg.tail_focal_epoch}",
        f"lr-restart@{cfg.lr_restart_epoch}",
        f"resize{cfg.progressive_image_size}@{cfg.progressive_resize_epoch}",
        f"light-aug@{cfg.final_clean_epoch}",
        f"cosine/center@{cfg.center_update_epoch}",
    ]
    return "schedule (0-based epochs): " + " ".join(parts)
