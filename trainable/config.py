"""TrainConfig: every knob of the staged recipe, with the seed script's names and defaults.

One source of truth: the training CLI flags, the search spaces' overrides, the Tune
config, the MLflow params and the exported best.yaml all use these field names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from trainable.errors import UserError

# The seed's defaults are written for a 50-epoch run; schedule epochs scale from it.
SEED_EPOCHS = 50

CHOICES: dict[str, tuple[str, ...]] = {
    "model_type": ("baseline", "multitask", "fewshot"),
    "optimizer": ("adam", "adamw", "sgd"),
    "scheduler": ("cosine", "step", "none"),
    "loss_type": ("weighted_ce", "multitask", "focal"),
    "device": ("auto", "cuda", "mps", "cpu"),
}

# Epoch-valued knobs of the staged schedule (0-based epoch at which the switch happens).
SCHEDULE_FIELDS: tuple[str, ...] = (
    "stage2_epoch",
    "stage3_epoch",
    "smoothing_decay_epoch1",
    "smoothing_decay_epoch2",
    "disable_sampler_epoch",
    "lr_restart_epoch",
    "tail_focal_epoch",
    "progressive_resize_epoch",
    "final_clean_epoch",
    "mixup_decay_epoch1",
    "mixup_decay_epoch2",
    "mixup_disable_epoch",
    "cutmix_disable_epoch",
    "center_update_epoch",
    "warmup_epochs",
)


def _knob(default, help_text: str, **extra):
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass
class TrainConfig:
    # --- data (seed layout) ---
    train_dir: str = _knob("data/cleaned/train", "training images directory")
    val_dir: str = _knob("data/cleaned/val", "validation images directory")
    train_meta: str = _knob("data/cleaned/metadata/train_metadata.csv", "training metadata CSV")
    val_meta: str = _knob("data/cleaned/metadata/val_metadata.csv", "validation metadata CSV")
    class_weights: str = _knob(
        "data/cleaned/metadata/class_weights.csv",
        "class weights CSV (label_61,weight); computed from train counts when absent",
    )
    demo: bool = _knob(False, "use the built-in synthetic dataset and a CPU-sized recipe")
    # --- model ---
    model_type: str = _knob("baseline", "baseline | multitask | fewshot")
    backbone: str = _knob("resnet50", "any timm model name")
    pretrained: bool = _knob(True, "start from pretrained weights (timm cache or --pretrained-path)")
    pretrained_path: str | None = _knob(None, "local pretrained weights file for the backbone")
    dropout: float = _knob(0.3, "dropout before the classifier")
    image_size: int = _knob(224, "input image size")
    # --- training ---
    epochs: int = _knob(50, "number of epochs")
    batch_size: int = _knob(32, "batch size")
    lr: float = _knob(5e-4, "base learning rate")
    weight_decay: float = _knob(1e-4, "weight decay")
    label_smoothing: float = _knob(0.05, "initial label smoothing")
    optimizer: str = _knob("adamw", "adam | adamw | sgd")
    scheduler: str = _knob("cosine", "cosine | step | none (all after --warmup-epochs)")
    use_amp: bool = _knob(True, "mixed precision (CUDA only)")
    warmup_epochs: int = _knob(5, "linear warmup from 0.02 x lr over this many epochs")
    grad_accum_steps: int = _knob(1, "optimizer step every N batches")
    grad_clip: float = _knob(1.0, "max gradient norm (0 disables clipping)")
    device: str = _knob("auto", "auto (cuda > mps > cpu) | cuda | mps | cpu")
    # --- loss ---
    loss_type: str = _knob("weighted_ce", "weighted_ce | multitask | focal")
    use_class_weights: bool = _knob(True, "weight CE by the class-weights CSV")
    focal_gamma: float = _knob(1.5, "focal loss gamma")
    tail_fraction: float = _knob(0.25, "bottom share of classes by train frequency that count as tail")
    aux_loss_weight: float = _knob(0.3, "weight of the crop and severity losses (multitask)")
    # --- sampling and augmentation ---
    balance_sampler: bool = _knob(False, "weighted sampler (1/sqrt(count)) until --disable-sampler-epoch")
    mixup_alpha: float = _knob(0.4, "mixup Beta alpha (0 disables)")
    mixup_prob: float = _knob(0.7, "probability of mixup on a batch")
    cutmix_alpha: float = _knob(0.6, "cutmix Beta alpha (0 disables)")
    cutmix_prob: float = _knob(0.5, "probability of cutmix on a batch")
    use_ema: bool = _knob(False, "keep an EMA of the weights and validate with it")
    ema_decay: float = _knob(0.999, "EMA decay")
    # --- staged schedule (0-based epochs) ---
    stage2_epoch: int = _knob(10, "stage 2: unfreeze the backbone's last block, LR x1.2")
    stage3_epoch: int = _knob(20, "stage 3: unfreeze everything")
    smoothing_decay_epoch1: int = _knob(12, "label smoothing x0.4 (0.05 -> 0.02)")
    smoothing_decay_epoch2: int = _knob(18, "label smoothing -> 0")
    disable_sampler_epoch: int = _knob(15, "switch the weighted sampler off")
    lr_restart_epoch: int = _knob(25, "LR restart: x0.4")
    tail_focal_epoch: int = _knob(18, "focal loss on tail-class samples from here")
    progressive_resize_epoch: int = _knob(30, "switch to --progressive-image-size")
    progressive_image_size: int = _knob(256, "image size after progressive resize")
    final_clean_epoch: int = _knob(40, "light augmentation from here")
    mixup_decay_epoch1: int = _knob(10, "mixup alpha / 2")
    mixup_decay_epoch2: int = _knob(12, "mixup alpha / 4")
    mixup_disable_epoch: int = _knob(15, "mixup off")
    cutmix_disable_epoch: int = _knob(10, "cutmix off")
    # --- feature head ---
    use_cosine_classifier: bool = _knob(False, "switch to a cosine classifier at --center-update-epoch")
    use_center_loss: bool = _knob(False, "add center loss at --center-update-epoch")
    center_loss_weight: float = _knob(0.01, "center loss weight")
    center_update_epoch: int = _knob(35, "epoch that activates cosine classifier / center loss")
    # --- few-shot ---
    fewshot_freeze_backbone: bool = _knob(True, "few-shot: keep the backbone frozen")
    fewshot_hidden: int = _knob(512, "few-shot: hidden width of the MLP head")
    fewshot_dropout: float = _knob(0.5, "few-shot: dropout in the MLP head")
    fewshot_head_lr_scale: float = _knob(5.0, "few-shot: head LR = lr x this")
    # --- run ---
    num_workers: int = _knob(4, "processes used to decode images into the cache")
    seed: int = _knob(42, "random seed")
    save_dir: str = _knob("checkpoints/task1_baseline", "checkpoint directory")
    save_freq: int = _knob(5, "write epoch_N.pth every N epochs (0: never)")
    log_interval: int = _knob(10, "batches between progress-bar metric updates")
    resume: str | None = _knob(None, "checkpoint to resume from")

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        unknown = sorted(set(values) - set(field_names()))
        if unknown:
            raise UserError(f"{source}: unknown TrainConfig field(s) {', '.join(unknown)}")
        return cls(**{k: coerce(k, v, source) for k, v in values.items()})

    def replace(self, **changes) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def validate(self) -> TrainConfig:
        """Raise UserError naming the first impossible setting; return self when valid."""
        _validate(self)
        return self


# `--pretrained-path demo` names the demo's shipped backbone wherever croptune is installed, so a
# saved demo config keeps working after the checkout moves (an absolute path would not).
DEMO_WEIGHTS = "demo"
DEMO_BACKBONE = Path(__file__).parent / "data" / "demo" / "backbone.safetensors"


def weights_file(pretrained_path: str) -> str:
    """The file a --pretrained-path value names: DEMO_WEIGHTS is the shipped demo backbone."""
    return str(DEMO_BACKBONE) if pretrained_path == DEMO_WEIGHTS else pretrained_path


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def field_types() -> dict[str, type]:
    base = {"str": str, "int": int, "float": float, "bool": bool, "str | None": str}
    return {f.name: base[f.type] for f in fields(TrainConfig)}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def coerce(name: str, value, source: str = "config"):
    """Convert a value from YAML / a search space to the field's type (ints stay ints)."""
    kind = field_types()[name]
    if value is None:
        if name in ("pretrained_path", "resume"):
            return None
        raise UserError(f"{source}: {name} must not be empty")
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if kind in (int, float) and isinstance(value, bool):  # YAML `epochs: true` would otherwise read as 1
            raise ValueError
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            number = float(value)
            if not math.isfinite(number):
                where = flag(name) if source == "flags" else f"{source}: {name}"
                raise UserError(f"{where}={value!r} is not a finite number; give a finite value")
            return number
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{source}: {name}={value!r} is not a valid {kind.__name__}") from None


def missing_class_weights(path: str) -> UserError:
    """A --class-weights file that is not there (only the default location may be absent)."""
    return UserError(f"--class-weights {path} does not exist: point it at a label_61,weight CSV, or leave the "
                     f"flag out (or pass --class-weights '') to compute weights from the train counts")


def scale_schedule(values: dict, old_epochs: int, new_epochs: int, keep: set[str] = frozenset()) -> dict:
    """Set epochs=new_epochs and scale the schedule epochs not in `keep` from old_epochs to it.

    Rounding keeps the order of the knobs (it is monotone); stage 3 is pushed one epoch past
    stage 2 when rounding collapses them on very short runs.
    """
    out = {**values, "epochs": new_epochs}
    if old_epochs == new_epochs:
        return out
    ratio = new_epochs / old_epochs
    for name in SCHEDULE_FIELDS:
        if name not in keep:
            out[name] = min(new_epochs, max(0, math.floor(values[name] * ratio + 0.5)))  # half rounds up
    if "stage3_epoch" not in keep and out["stage3_epoch"] <= out["stage2_epoch"]:
        out["stage3_epoch"] = out["stage2_epoch"] + 1
    if "warmup_epochs" not in keep and out["warmup_epochs"] >= new_epochs:
        out["warmup_epochs"] = 0
    return out


def _validate(cfg: TrainConfig) -> None:
    def bad(name: str, why: str) -> None:
        raise UserError(f"{flag(name)}={getattr(cfg, name)}: {why}")

    for f in fields(cfg):  # inf / nan pass every range check below (nan compares false to all)
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            bad(f.name, "must be a finite number")
    for name, options in CHOICES.items():
        if getattr(cfg, name) not in options:
            bad(name, f"must be one of {', '.join(options)}")
    positive_ints = ("epochs", "batch_size", "image_size", "progressive_image_size", "grad_accum_steps",
                     "fewshot_hidden", "log_interval")
    for name in positive_ints:
        if getattr(cfg, name) < 1:
            bad(name, "must be at least 1")
    for name in ("image_size", "progressive_image_size"):
        if getattr(cfg, name) < 16:
            bad(name, "must be at least 16 pixels")
    for name in ("num_workers", "save_freq"):
        if getattr(cfg, name) < 0:
            bad(name, "must not be negative")
    if not cfg.lr > 0:
        bad("lr", "must be positive")
    for name in ("weight_decay", "mixup_alpha", "cutmix_alpha", "focal_gamma", "grad_clip",
                 "center_loss_weight", "aux_loss_weight"):
        if getattr(cfg, name) < 0:
            bad(name, "must not be negative")
    for name in ("mixup_prob", "cutmix_prob"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            bad(name, "is a probability: use a value in [0, 1]")
    for name in ("dropout", "fewshot_dropout", "label_smoothing"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            bad(name, "must be in [0, 1)")
    if not 0.0 < cfg.ema_decay < 1.0:
        bad("ema_decay", "must be in (0, 1), e.g. 0.999")
    if not 0.0 < cfg.tail_fraction <= 1.0:
        bad("tail_fraction", "must be in (0, 1], e.g. 0.25")
    if cfg.loss_type == "multitask" and cfg.model_type != "multitask":
        bad("loss_type", "needs --model-type multitask (it adds the crop and severity heads)")
    if cfg.fewshot_head_lr_scale <= 0:
        bad("fewshot_head_lr_scale", "must be positive")
    for name in SCHEDULE_FIELDS:
        value = getattr(cfg, name)
        if value < 0:
            bad(name, "must not be negative")
        if value > cfg.epochs:
            bad(name, f"is beyond --epochs {cfg.epochs} and would never take effect; "
                      f"lower it or raise --epochs")
    if cfg.warmup_epochs and cfg.warmup_epochs >= cfg.epochs:
        bad("warmup_epochs", f"must be below --epochs {cfg.epochs}")
    ordered = [
        ("stage2_epoch", "stage3_epoch", True),
        ("smoothing_decay_epoch1", "smoothing_decay_epoch2", False),
        ("mixup_decay_epoch1", "mixup_decay_epoch2", False),
        ("mixup_decay_epoch2", "mixup_disable_epoch", False),
    ]
    for first, second, strict in ordered:
        a, b = getattr(cfg, first), getattr(cfg, second)
        if a > b or (strict and a == b):
            relation = "before" if strict else "at or before"
            raise UserError(f"stage epochs out of order: {flag(first)}={a} must come {relation} "
                            f"{flag(second)}={b}")
