"""ModelEMA: an exponential moving average of all weights and buffers, for validation.

A thin wrapper over timm's ModelEmaV3 (foreach lerp of every floating-point tensor in the
state dict: parameters and BatchNorm statistics; integer/bool buffers are copied):

    shadow = decay * shadow + (1 - decay) * current      after every optimizer step

The wrapper adds the recipe's one special case: the cosine-classifier switch. The switch is
a bool buffer (copied, not averaged), and the shadow's cosine head must be warm-started
from the *shadow's* linear classifier, not left at its initial weights; so when the model
turned the cosine head on, update() activates it on the shadow first.
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float):
        # Fixed decay from the first step (no timm warmup), as the seed's ModelEMA.
        self._ema = ModelEmaV3(model, decay=decay, use_warmup=False)
        self._ema.module.requires_grad_(False)  # the shadow is never trained: no autograd graph
        self.decay = decay

    @property
    def module(self) -> nn.Module:
        """The averaged model (in eval mode): use it for validation."""
        return self._ema.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if getattr(model, "cosine_active", False) and not getattr(self.module, "cosine_active", True):
            self.module.activate_cosine()
        self._ema.update(model)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.module.load_state_dict(state_dict)
