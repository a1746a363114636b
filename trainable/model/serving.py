"""A trained CropNet as a plain classifier: one image tensor in, one logits tensor out.

CropNet.forward returns a dict (logits, features, multitask heads); MLflow's pytorch flavour
(and most serving code) wants a single tensor. `LogitsModel` wraps the network unchanged:

    model = model_from_checkpoint(cfg, load_checkpoint("last.pth"))   # EMA weights if use_ema
    logits = model(eval_transform(images_uint8_nhwc, model.image_size))   # [N, 61]

Input: float32 NCHW, ImageNet-normalised, `image_size` square (what
trainable.train.augment.eval_transform makes from decoded uint8 images).
"""

from __future__ import annotations

import torch
from torch import nn


class LogitsModel(nn.Module):
    def __init__(self, net: nn.Module, image_size: int):
        super().__init__()
        self.net = net
        self.image_size = int(image_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)["logits"]


def model_from_checkpoint(cfg, state: dict, use_ema: bool | None = None) -> LogitsModel:
    """The checkpoint's weights (the EMA shadow when cfg.use_ema) in eval mode, on the CPU.

    image_size: the size the run validated at in its last epoch (progressive resizing).
    """
    from trainable.model.networks import build_model
    from trainable.train.schedule import plan

    use_ema = cfg.use_ema if use_ema is None else use_ema
    weights = state.get("ema_state_dict") if use_ema else None
    net = build_model(cfg.replace(pretrained=False, pretrained_path=None))  # the weights come from `state`
    # The cosine head's switch is a buffer: load_state_dict turns it on when it was on.
    net.load_state_dict(weights if weights is not None else state["model_state_dict"])
    last_epoch = max(int(state.get("epoch", cfg.epochs)) - 1, 0)
    return LogitsModel(net, plan(cfg, last_epoch).image_size).eval()
