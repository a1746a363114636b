"""The Ray Tune function trainable: one trial = one fit() run, reported epoch by epoch.

    tune.with_resources(tune.with_parameters(train_trial, data=bundle, base=base_config), {...})

`config` holds the searcher's overrides; the base TrainConfig reaches the trial through
`tune.with_parameters(..., base=...)`, and the trial trains on base + overrides, validated
(`_trial_config`). Without a `base`, the overrides apply to TrainConfig's defaults.

Only `ray.tune.*` is used (report, get_checkpoint, Checkpoint): Ray 2.60's `ray.train.*`
raises inside Tune. This is the one module of `trainable/` that imports Ray.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

import ray
from ray import tune

from trainable.config import TrainConfig
from trainable.errors import DivergedError

# torch and the loop are imported inside the trial: the driver only pickles `train_trial` by
# reference, and importing torch + timm there would cost it seconds for nothing.

CHECKPOINT_FILE = "checkpoint.pth"
# Beside each checkpoint: that epoch's val predictions and labels (arrays `predictions`,
# `labels`), from which the end of the search draws the best trial's confusion matrix.
PREDICTIONS_FILE = "val_predictions.npz"
DIVERGED_MARKER = "diverged.txt"
MPS_RESOURCE = "mps"  # the custom resource tuner.resources gives trials on an Apple GPU
# Reported every epoch (fit() reports these and a few more; all numeric ones are passed on).
REPORTED = ("epoch", "val_acc", "tail_acc", "macro_f1", "val_loss", "train_loss", "train_acc",
            "lr", "stage", "image_size")


class TrialDiverged(RuntimeError):
    """Raised to end a trial whose loss became NaN/inf; Tune records it as the trial's error.

    The message starts with "diverged:" so the summary, MLflow and users can tell it apart
    from a crash.
    """


def train_trial(config: dict, data=None, base=None, prefix: dict | None = None) -> None:
    """Train one trial, restoring from Tune's checkpoint when Tune restarts it.

    `prefix` ({"dir": ..., "epochs": k}) turns on prefix sharing (trainable.train.prefix): a new trial
    starts from the longest stored prefix it shares (up to k epochs) and replays its reports,
    and stores its own epochs 1..k for the trials after it.
    """
    if data is None:
        raise ValueError("train_trial needs the dataset: wrap it with tune.with_parameters(train_trial, data=...)")
    from trainable.train.loop import fit

    cfg = _trial_config(config, base)
    device = trial_device(cfg.device)
    _set_threads()
    trial_dir = Path(tune.get_context().get_trial_dir())
    if (trial_dir / DIVERGED_MARKER).is_file():
        # A retry of a diverged trial would replay the same epochs into the same NaN.
        raise TrialDiverged((trial_dir / DIVERGED_MARKER).read_text().strip())
    sharing = _Sharing(cfg, prefix)
    state = _restored_state(sharing)
    if state is None:
        state = sharing.fork()
    try:
        for result in fit(cfg, data, state=state, device=device):
            _report(result, data, sharing)
    except DivergedError as exc:
        message = f"diverged: {exc}"
        _write_marker(trial_dir / DIVERGED_MARKER, message)
        raise TrialDiverged(message) from None


def _trial_config(config: dict, base) -> TrainConfig:
    if base is None:
        start = TrainConfig()
    elif isinstance(base, TrainConfig):
        start = base
    else:
        start = TrainConfig.from_dict(dict(base), source="base config")
    return start.replace(**config).validate()


def trial_device(requested: str = "auto") -> str:
    """The device Ray assigned this trial: its GPU (cuda), the `mps` resource, else CPU.

    Ray lets a trial that asked for no GPU still see every CUDA device, so availability
    says nothing; the assignment does. Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU(s),
    so "cuda" is the right one (shared with other trials when --gpus-per-trial < 1).
    """
    import torch

    from trainable.devices import mps_available

    if requested == "cpu":
        return "cpu"
    gpu_ids = ray.get_gpu_ids()
    assigned = ray.get_runtime_context().get_assigned_resources()
    has_mps = any(name == MPS_RESOURCE or name.startswith(MPS_RESOURCE + "_group") for name in assigned)
    if gpu_ids and torch.cuda.is_available():
        return "cuda"
    if (has_mps or gpu_ids) and mps_available():
        return "mps"
    if gpu_ids:
        print(f"warning: Ray assigned GPU(s) {gpu_ids} to this trial but torch sees no CUDA device "
              f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); training on CPU",
              file=sys.stderr, flush=True)
    if requested in ("cuda", "mps"):
        raise RuntimeError(f"--device {requested}: this trial was assigned no {requested} device by Ray "
                           f"(assigned: {assigned}); check --gpus-per-trial")
    return "cpu"


def _set_threads() -> None:
    """As many intra-op threads as CPUs Ray assigned (Ray also sets OMP_NUM_THREADS so)."""
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    if cpus >= 1:
        torch.set_num_threads(math.floor(cpus))


class _Sharing:
    """One trial's side of prefix sharing: where it forked (0: it did not) and what it reported."""

    def __init__(self, cfg: TrainConfig, prefix: dict | None):
        from trainable.train.prefix import PrefixStore

        self.cfg = cfg
        self.store = PrefixStore(prefix["dir"]) if prefix else None
        self.upto = int(prefix["epochs"]) if prefix else 0
        self.forked_at = 0
        self.history: list[dict] = []

    def fork(self) -> dict | None:
        """Replay the longest stored prefix (each epoch with its stored checkpoint); its state, or None."""
        found = self.store.longest(self.cfg, self.upto) if self.store else None
        if found is None:
            return None
        from trainable.train.checkpoint import load_checkpoint

        k, directory, history = found
        self.forked_at = k
        for metrics in history:
            epoch = int(metrics["epoch"])
            self.remember(metrics)
            stored = self.store.path(self.cfg, epoch)
            with tempfile.TemporaryDirectory(prefix="croptune-ckpt-") as copy:
                if (stored / CHECKPOINT_FILE).is_file():  # a checkpoint on every replayed report: a pause keeps it
                    _copy_checkpoint(stored, Path(copy), self.forked_at)
                    tune.report(self.tagged(metrics), checkpoint=tune.Checkpoint.from_directory(copy))
                else:
                    tune.report(self.tagged(metrics))
        return load_checkpoint(directory / CHECKPOINT_FILE)

    def tagged(self, metrics: dict) -> dict:
        return {**metrics, "prefix_epochs": self.forked_at}

    def remember(self, metrics: dict) -> None:
        self.history = [m for m in self.history if m["epoch"] < metrics["epoch"]] + [dict(metrics)]

    def offer(self, epoch: int, directory: Path) -> None:
        """Store epoch `epoch`'s checkpoint for later trials, if this run has every report before it."""
        whole = [m["epoch"] for m in self.history] == list(range(1, epoch + 1))  # not after a restart
        if self.store is not None and epoch <= self.upto and whole:
            self.store.put(self.cfg, epoch, directory, self.history)


PREFIX_FILE = "prefix.json"  # in a forked trial's checkpoints: the epoch it forked at


def _copy_checkpoint(source: Path, target: Path, forked_at: int) -> None:
    import shutil

    for name in (CHECKPOINT_FILE, PREDICTIONS_FILE):
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    _mark_forked(target, forked_at)


def _mark_forked(directory: Path, forked_at: int) -> None:
    """Record in a checkpoint where its trial forked, so a restart from it still reports prefix_epochs."""
    (directory / PREFIX_FILE).write_text(json.dumps({"forked_at": forked_at}))


def _restored_state(sharing: _Sharing | None = None) -> dict | None:
    from trainable.train.checkpoint import load_checkpoint

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        marker = Path(directory) / PREFIX_FILE
        if sharing is not None and marker.is_file():
            sharing.forked_at = int(json.loads(marker.read_text())["forked_at"])
        return load_checkpoint(Path(directory) / CHECKPOINT_FILE)


def _report(result, data=None, sharing: _Sharing | None = None) -> None:
    """Report one trained epoch to Tune with its checkpoint (and val predictions) beside it."""
    numeric = {k: v for k, v in result.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    missing = [k for k in REPORTED if k not in numeric]
    if missing:
        raise RuntimeError(f"fit() did not report {', '.join(missing)}")
    # REPORTED first: Tune's live table shows the first few metrics of a result.
    metrics = {**{k: numeric[k] for k in REPORTED}, **numeric, "epoch": int(result.epoch)}
    from trainable.train.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory(prefix="croptune-ckpt-") as directory:
        save_checkpoint(result.state, Path(directory) / CHECKPOINT_FILE)
        _save_val_predictions(result, data, Path(directory) / PREDICTIONS_FILE)
        if sharing is not None:
            sharing.remember(metrics)
            sharing.offer(result.epoch, Path(directory))  # before report: a stopped trial never returns from it
            if sharing.forked_at:
                _mark_forked(Path(directory), sharing.forked_at)
                metrics = sharing.tagged(metrics)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def _save_val_predictions(result, data, path: Path) -> None:
    predictions = getattr(result, "val_predictions", None)
    labels = getattr(getattr(data, "val", None), "labels", None)
    if predictions is None or labels is None:
        return
    import numpy as np

    np.savez(path, predictions=np.asarray(predictions, dtype=np.int64), labels=np.asarray(labels, dtype=np.int64))


def _write_marker(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
