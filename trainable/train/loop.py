"""The staged loop: fit(cfg, data, state=None) yields one EpochResult per epoch.

The standalone CLI, the Tune trainable, the tests and the benchmarks all drive this same
generator. The loop applies plan(cfg, epoch); it makes no schedule decisions of its own.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from trainable.config import TrainConfig
from trainable.data.dataset import DataBundle, Split
from trainable.devices import select_device
from trainable.errors import DivergedError
from trainable.model.ema import ModelEMA
from trainable.model.losses import tail_classes
from trainable.model.networks import build_model
from trainable.model.objective import BatchTargets, Objective
from trainable.train.augment import eval_transform, mix_batch, train_augment
from trainable.train.checkpoint import FORMAT
from trainable.train.metrics import classification_metrics
from trainable.train.optim import build_optimizer, build_scheduler, set_epoch_lr
from trainable.train.sampler import epoch_order
from trainable.train.schedule import EpochPlan, plan


@dataclass
class EpochResult:
    epoch: int            # 1-based number of completed epochs
    metrics: dict
    state: dict           # the whole checkpoint; references live tensors: save before advancing
    is_best: bool
    val_predictions: np.ndarray = field(repr=False, default=None)


class _Run:
    """Everything one training run owns, built once at step 0."""

    def __init__(self, cfg: TrainConfig, data: DataBundle, device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.model = build_model(cfg).to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(cfg, self.model.param_groups())
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.amp = cfg.use_amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.use_ema else None
        self.tails = tail_classes(data.class_counts, cfg.tail_fraction)
        tail_lookup = torch.zeros(len(data.class_counts), dtype=torch.bool)
        tail_lookup[torch.as_tensor(self.tails, dtype=torch.long)] = True
        # np.array copies: the shared dataset arrays are read-only (Ray object store / mmap)
        weights = torch.from_numpy(np.array(data.class_weights, dtype=np.float32)) if cfg.use_class_weights else None
        self.objective = Objective(cfg, weights.to(device) if weights is not None else None,
                                   tail_lookup.to(device))
        self.start_epoch = 0
        self.best = {"best_val_acc": -1.0, "best_macro_f1": -1.0, "best_epoch": 0}

    # ------------------------------------------------------------------ state
    def state(self, epoch: int, metrics: dict) -> dict:
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": FORMAT,
            "epoch": epoch,
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "scaler_state_dict": self.scaler.state_dict(),
            "ema_state_dict": self.ema.state_dict() if self.ema else None,
            "ema_updates": self.ema.updates if self.ema else None,
            "rng_state": rng,
            "cosine_active": bool(getattr(self.model, "cosine_active", False)),
            "tail_classes": [int(c) for c in self.tails],
            "config": self.cfg.to_dict(),
            **self.best,
            "train_loss": metrics["train_loss"],
            "train_acc": metrics["train_acc"],
            "val_loss": metrics["val_loss"],
            "val_acc": metrics["val_acc"],
            "tail_mean_acc": metrics["tail_acc"],
            "macro_f1": metrics["macro_f1"],
            "metrics": dict(metrics),
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.scheduler.load_state_dict(state["scheduler_state_dict"])
        self.scaler.load_state_dict(state["scaler_state_dict"])
        if self.ema is not None and state.get("ema_state_dict") is not None:
            self.ema.load_state_dict(state["ema_state_dict"], state.get("ema_updates"))
        rng = state["rng_state"]
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.best = {k: state[k] for k in self.best}
        self.start_epoch = int(state["epoch"])

    # ------------------------------------------------------------------ plan
    def apply(self, p: EpochPlan) -> float:
        self.model.set_stage(p.stage_name)
        if p.cosine_head and not self.model.cosine_active:
            self.model.activate_cosine()
            if self.ema is not None:
                self.ema.module.activate_cosine()
        return set_epoch_lr(self.scheduler, self.optimizer, p.epoch, p.lr_scale)

    # ------------------------------------------------------------------ train
    def train_epoch(self, p: EpochPlan, progress: bool) -> dict:
        cfg, split, device = self.cfg, self.data.train, self.device
        self.model.train()
        order = epoch_order(split.labels, p.use_sampler, self.generator).numpy()
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches.pop()  # a batch of one breaks BatchNorm in train mode
        bar = _progress(len(batches), f"train {p.epoch + 1}", progress)
        total_loss = total_correct = seen = 0.0
        data_wait = 0.0
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for step, index in enumerate(batches):
            t0 = time.perf_counter()
            images, targets = _gather(split, index, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            data_wait += time.perf_counter() - t0
            images = train_augment(images, p.image_size, light=p.light_aug, generator=self.generator)
            perm, lam = None, 1.0
            if p.mixup_alpha > 0 or p.cutmix_alpha > 0:
                images, perm, lam = mix_batch(images, mixup_alpha=p.mixup_alpha, cutmix_alpha=p.cutmix_alpha,
                                              mixup_prob=cfg.mixup_prob, cutmix_prob=cfg.cutmix_prob,
                                              generator=self.generator)
            if device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=self.amp):
                outputs = self.model(images)
                loss = self.objective(outputs, targets, perm, lam, p, getattr(self.model, "center_loss", None))
            if not torch.isfinite(loss):
                raise DivergedError(f"training loss became {loss.item()} at epoch {p.epoch + 1}, batch {step + 1}: "
                                    f"lower --lr or raise --grad-clip")
            self.scaler.scale(loss / cfg.grad_accum_steps).backward()
            if (step + 1) % cfg.grad_accum_steps == 0 or step + 1 == len(batches):
                self._optimizer_step()
            with torch.no_grad():
                predicted = outputs["logits"].argmax(1)
                correct = lam * (predicted == targets.labels).float().sum()
                if perm is not None:
                    correct += (1 - lam) * (predicted == targets.labels[perm]).float().sum()
            n = len(index)
            total_loss += loss.item() * n
            total_correct += correct.item()
            seen += n
            if bar is not None:
                bar.update(1)
                if (step + 1) % cfg.log_interval == 0:
                    bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{100 * total_correct / seen:.1f}%")
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - started
        return {"train_loss": total_loss / max(seen, 1), "train_acc": 100.0 * total_correct / max(seen, 1),
                "train_time_s": elapsed, "data_wait_frac": data_wait / max(elapsed, 1e-9),
                "train_images_per_s": seen / max(elapsed, 1e-9)}

    def _optimizer_step(self) -> None:
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = [q for g in self.optimizer.param_groups for q in g["params"] if q.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)

    # ------------------------------------------------------------------ validate
    @torch.no_grad()
    def validate(self, p: EpochPlan, model: torch.nn.Module) -> tuple[dict, np.ndarray]:
        model.eval()
        split, device = self.data.val, self.device
        total_loss, predictions = 0.0, []
        batch = self.cfg.batch_size * 2
        for start in range(0, len(split.labels), batch):
            index = np.arange(start, min(start + batch, len(split.labels)))
            images, targets = _gather(split, index, device)
            images = eval_transform(images, p.image_size)
            if device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=self.amp):
                logits = model(images)["logits"].float()
            total_loss += F.cross_entropy(logits, targets.labels, reduction="sum").item()
            predictions.append(logits.argmax(1).cpu())
        predicted = torch.cat(predictions).numpy()
        scores = classification_metrics(split.labels, predicted, self.tails, num_classes=len(self.data.class_counts))
        val_loss = total_loss / max(len(split.labels), 1)
        return {"val_loss": val_loss, "val_acc": float(scores["acc"]), "tail_acc": float(scores["tail_acc"]),
                "macro_f1": float(scores["macro_f1"])}, predicted


def _gather(split: Split, index: np.ndarray, device: torch.device) -> tuple[torch.Tensor, BatchTargets]:
    """Fetch a batch of decoded uint8 images (NHWC) and its targets onto the device."""
    index = np.asarray(index)
    images = torch.from_numpy(np.ascontiguousarray(split.images[index]))
    labels = torch.from_numpy(split.labels[index])  # fancy indexing copies: writable
    crops = torch.from_numpy(split.crops[index])
    severities = torch.from_numpy(split.severities[index])
    pin = device.type == "cuda"
    if pin:
        images = images.pin_memory()
    move = lambda t: t.to(device, non_blocking=pin)  # noqa: E731
    return move(images), BatchTargets(move(labels), move(crops), move(severities))


def _progress(total: int, desc: str, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def fit(cfg: TrainConfig, data: DataBundle, state: dict | None = None, device: str | None = None,
        progress: bool = False) -> Iterator[EpochResult]:
    """Train cfg on data, resuming from `state` (a checkpoint dict) when given; one result per epoch."""
    cfg.validate()
    dev = select_device(device or cfg.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = False  # seed: reproducible runs
        torch.backends.cudnn.deterministic = True
    run = _Run(cfg, data, dev)
    if state is not None:
        run.restore(state)
    for epoch in range(run.start_epoch, cfg.epochs):
        started = time.perf_counter()
        p = plan(cfg, epoch)
        lr = run.apply(p)
        train = run.train_epoch(p, progress)
        # With EMA, the shadow is what is validated, ranked and exported; the raw weights' scores ride along.
        val, predicted = run.validate(p, run.ema.module if run.ema is not None else run.model)
        if run.ema is not None:
            raw, _ = run.validate(p, run.model)
            val.update({f"{key}_raw": value for key, value in raw.items()})
        is_best = val["val_acc"] > run.best["best_val_acc"]
        if is_best:
            run.best = {"best_val_acc": val["val_acc"], "best_macro_f1": val["macro_f1"], "best_epoch": epoch + 1}
        metrics = {"epoch": epoch + 1, **train, **val, "lr": lr, "stage": p.stage, "image_size": p.image_size,
                   "epoch_time_s": time.perf_counter() - started}
        if not all(math.isfinite(v) for v in (train["train_loss"], val["val_loss"])):
            raise DivergedError(f"loss became non-finite at epoch {epoch + 1}: lower --lr or raise --grad-clip")
        yield EpochResult(epoch + 1, metrics, run.state(epoch + 1, metrics), is_best, predicted)
