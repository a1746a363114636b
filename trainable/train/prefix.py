"""Prefix sharing: a trial that would repeat another trial's first k epochs starts from its epoch-k state.

Use it in a schedule search, where trials differ only in *when* things switch: two trials with
the same seed, the same knobs and the same plan() for epochs 0..k-1 compute the same state at
epoch k (the loop is deterministic on CPU: tests/test_prefix.py). `prefix_key(cfg, k)` names that
state; a `PrefixStore` keeps one Tune checkpoint directory per key plus the metrics reported up to
it, so a later trial loads the longest prefix it shares and replays those reports instead of
training them again.

Contract for callers: `put(cfg, k, directory, history)` once epoch k is saved, before reporting it (idempotent:
first writer wins, atomically); `longest(cfg, upto)` before training, which returns the deepest
stored `(k, directory, history)` with k <= upto, or None. Entries are only ever read by trials
whose key matches, so a stale or partial store costs time, never correctness.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import astuple
from pathlib import Path

from trainable.config import SCHEDULE_FIELDS, TrainConfig
from trainable.train.schedule import EpochPlan, plan

# Knobs that touch training only while a plan switch is on; before it, trials that differ only in
# them train identically (the objective reads focal_gamma only under focal, tail_fraction only
# for the focal mask, center_loss_weight only under center loss).
LATE_KNOBS = {
    "focal_gamma": lambda cfg, p: cfg.loss_type == "focal" or p.focal_tail,
    "tail_fraction": lambda cfg, p: cfg.loss_type != "focal" and p.focal_tail,
    "center_loss_weight": lambda cfg, p: p.center_loss,
}
# Schedule fields that also shape every epoch outside plan(): the LR ramp's slope and the cosine's start.
WHOLE_RUN_SCHEDULE = ("warmup_epochs",)
# Fields that never change what is computed (where files go, how progress prints).
INERT = ("save_dir", "save_freq", "log_interval", "resume", "num_workers")
# Bumped when the loop's state or key changes meaning, so an old store is never reused.
KEY_VERSION = 1


def knobs(cfg: TrainConfig) -> tuple:
    """The fields that act from epoch 0: every field but the switch-points, late knobs and inert ones."""
    skip = (set(SCHEDULE_FIELDS) - set(WHOLE_RUN_SCHEDULE)) | set(LATE_KNOBS) | set(INERT)
    return tuple(sorted((k, v) for k, v in cfg.to_dict().items() if k not in skip))


def epoch_key(cfg: TrainConfig, epoch: int) -> tuple:
    """What epoch `epoch` does: its plan and the late knobs it switches on."""
    p: EpochPlan = plan(cfg, epoch)
    late = tuple((name, getattr(cfg, name)) for name, active in LATE_KNOBS.items() if active(cfg, p))
    return astuple(p) + late


def prefix_key(cfg: TrainConfig, k: int) -> str:
    """A name for the state after epochs 0..k-1 of cfg (equal keys: equal states)."""
    text = repr((KEY_VERSION, knobs(cfg), tuple(epoch_key(cfg, e) for e in range(k))))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def shared_prefix(a: TrainConfig, b: TrainConfig) -> int:
    """How many leading epochs two configs compute identically."""
    if knobs(a) != knobs(b):
        return 0
    k = 0
    while k < min(a.epochs, b.epochs) and epoch_key(a, k) == epoch_key(b, k):
        k += 1
    return k


class PrefixStore:
    """Checkpoint directories by prefix key under `root` (a search uses `<experiment>/prefixes`)."""

    HISTORY = "history.json"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, cfg: TrainConfig, k: int) -> Path:
        return self.root / f"{k:04d}-{prefix_key(cfg, k)}"

    def put(self, cfg: TrainConfig, k: int, directory: str | os.PathLike, history: list[dict]) -> bool:
        """Store a copy of `directory` (the epoch-k checkpoint) and the k reports; False if already there."""
        target = self.path(cfg, k)
        if target.exists():
            return False
        staging = self.root / f".{target.name}.{uuid.uuid4().hex}"
        shutil.copytree(directory, staging)
        (staging / self.HISTORY).write_text(json.dumps(history))
        try:
            os.rename(staging, target)  # atomic; a concurrent writer of the same key wins
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            return False
        return True

    def longest(self, cfg: TrainConfig, upto: int) -> tuple[int, Path, list[dict]] | None:
        """The deepest stored prefix of cfg with k <= upto: (k, directory, the k reports)."""
        if not self.root.is_dir():
            return None
        for k in range(min(upto, cfg.epochs - 1), 0, -1):
            directory = self.path(cfg, k)
            history = directory / self.HISTORY
            if history.is_file():
                return k, directory, json.loads(history.read_text())
        return None

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file()) if self.root.is_dir() else 0
