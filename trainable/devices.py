"""Device choice: auto picks CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch

from trainable.errors import UserError


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device auto or cpu")
    if name == "mps" and not mps_available():
        raise UserError("--device mps: Apple MPS is not available on this machine; use --device auto or cpu")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise UserError(f"--device {name}: use auto, cuda, mps or cpu")
    return torch.device(name)
