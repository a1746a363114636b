"""Optimizer and LR schedule, built once at step 0 with every parameter group the run will use.

Stages only flip requires_grad and the per-group LR; no group is added mid-run, so a
checkpoint's optimizer state always matches the model it is restored into.
"""

from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler, StepLRScheduler

from trainable.config import TrainConfig

WARMUP_START = 0.02  # seed: warmup starts at 0.02 x lr (1e-5 for 5e-4)
COSINE_FLOOR = 1e-6  # seed: eta_min


def build_optimizer(cfg: TrainConfig, groups: dict[str, list[torch.nn.Parameter]]) -> torch.optim.Optimizer:
    """One optimizer group per model part; the few-shot head gets lr x fewshot_head_lr_scale."""
    head_scale = cfg.fewshot_head_lr_scale if cfg.model_type == "fewshot" else 1.0
    param_groups = [
        {"params": params, "name": name, "lr": cfg.lr * (head_scale if name == "head" else 1.0)}
        for name, params in groups.items()
        if params
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=0.9, nesterov=True,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    """timm epoch scheduler: linear warmup from 0.02 x lr, then cosine to 1e-6 / step / constant."""
    warmup = {
        "warmup_t": cfg.warmup_epochs,
        "warmup_lr_init": WARMUP_START * cfg.lr,
        "warmup_prefix": True,
        "t_in_epochs": True,
    }
    remaining = max(1, cfg.epochs - cfg.warmup_epochs)
    if cfg.scheduler == "cosine":
        return CosineLRScheduler(optimizer, t_initial=remaining, lr_min=COSINE_FLOOR, **warmup)
    if cfg.scheduler == "step":
        # The seed gives no step parameters: decay x0.1 twice, at 1/3 and 2/3 of the post-warmup run.
        return StepLRScheduler(optimizer, decay_t=max(1, remaining // 3), decay_rate=0.1, **warmup)
    return StepLRScheduler(optimizer, decay_t=10**9, decay_rate=1.0, **warmup)  # "none": constant


def set_epoch_lr(scheduler, optimizer: torch.optim.Optimizer, epoch: int, lr_scale: float) -> float:
    """Apply the scheduler's LR for `epoch`, times the plan's stage/restart scale; return the base LR."""
    scheduler.step(epoch)  # sets each group's LR from its initial LR; not cumulative
    for group in optimizer.param_groups:
        group["lr"] *= lr_scale
    return reported_lr(optimizer)


def reported_lr(optimizer: torch.optim.Optimizer) -> float:
    """The LR of the backbone groups (the run's base LR); the head's when it is the only group."""
    by_name = {g["name"]: g["lr"] for g in optimizer.param_groups}
    return by_name.get("backbone_rest", by_name.get("backbone_last", optimizer.param_groups[0]["lr"]))
