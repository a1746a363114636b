"""One checkpoint restores a run exactly; it is written atomically and read with weights_only=True."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from trainable.errors import UserError

FORMAT = "croptune-checkpoint-v1"
# The seed script's keys, which every checkpoint carries (plus EMA, scheduler, scaler, RNG, ...).
SEED_KEYS = ("epoch", "model_state_dict", "optimizer_state_dict", "best_val_acc", "train_loss",
             "train_acc", "val_loss", "val_acc", "tail_mean_acc", "macro_f1")


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write to a temp file in the same directory, fsync, then rename over `path`.

    A process killed mid-write leaves the previous file at `path` intact, and its partial temp
    file behind; the next successful save of `path` removes such leftovers (one writer per
    path: a trial's restarted worker, or the same training resumed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        leftover.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a croptune checkpoint safely; anything else is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or truncated files
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {path} is not a croptune checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not a croptune checkpoint (no '{FORMAT}' marker)")
    missing = [key for key in SEED_KEYS if key not in state]
    if missing:
        raise UserError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return state
