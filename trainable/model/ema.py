"""ModelEMA: an exponential moving average of the weights (buffers copied), for validation.

Call update(model) after every optimizer step and validate, rank and export `module`. To
resume, save `updates` beside state_dict() (the checkpoint's `ema_updates`) and pass both to
load_state_dict().

A thin wrapper over timm's ModelEmaV3 with its decay warmup (`use_warmup=True`, warmup_gamma
1, warmup_power 2/3). After optimizer step n (n = 1, 2, ...), for every parameter:

    shadow = d_n * shadow + (1 - d_n) * current,     d_n = min(decay, 1 - n ** (-2/3))

(d_1 = 0: the first update copies). The shadow thus averages roughly the last n ** (2/3)
steps (~22 after 100 steps); the configured decay (0.999) is reached only after ~31,600
steps, so on a short run a fixed decay would leave the shadow near the initial weights.
Buffers (BatchNorm statistics, the cosine switch, counters) are copied from the live model
(`exclude_buffers=True`), not averaged: averaged statistics do not match the averaged
weights (the numbers: bench/README.md, "Numbers behind the code").

The wrapper adds the recipe's one special case: the cosine-classifier switch. The switch is
a bool buffer (copied, not averaged), and the shadow's cosine head must be warm-started
from the *shadow's* linear classifier, not left at its initial weights; so when the model
turned the cosine head on, update() activates it on the shadow first.
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn

WARMUP_POWER = 2 / 3  # timm's default; 3/4 (timm's hint for shorter runs) averages longer and lags more


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self._ema = ModelEmaV3(model, decay=decay, use_warmup=warmup, warmup_gamma=1.0,
                               warmup_power=WARMUP_POWER, exclude_buffers=True)
        self._ema.module.requires_grad_(False)  # the shadow is never trained: no autograd graph
        self.decay = decay
        self.warmup = warmup
        self.updates = 0  # optimizer steps averaged so far: drives the warmup

    @property
    def module(self) -> nn.Module:
        """The averaged model (in eval mode): use it for validation."""
        return self._ema.module

    def current_decay(self) -> float:
        """The decay the next update() will use."""
        return self._ema.get_decay(self.updates + 1 if self.warmup else None)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if getattr(model, "cosine_active", False) and not getattr(self.module, "cosine_active", True):
            self.module.activate_cosine()
        self._ema.update(model, step=self.updates + 1 if self.warmup else None)
        self.updates += 1

    def state_dict(self) -> dict:
        """The shadow's model state dict (loadable into a bare model); `updates` is kept apart."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict, updates: int | None = None) -> None:
        """Restore the shadow; `updates` None (a checkpoint without `ema_updates`) means fully warmed up."""
        self.module.load_state_dict(state_dict)
        self.updates = int(updates) if updates is not None else FULLY_WARM


# An update count past which every decay < 1 - 1e-9 is reached: a checkpoint without a count keeps the fixed decay.
FULLY_WARM = 10**14
