"""Command-line layering for TrainConfig, shared by `python -m trainable` and run_search.py.

Layers, later wins: the seed's defaults -> the demo recipe (--demo) -> a saved config
(--config FILE.yaml, or the checkpoint's own config when resuming) -> flags given on the
command line. When the epoch count changes between layers, every schedule epoch that was
not given explicitly scales with it, so `--epochs 12` keeps the recipe's shape.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trainable.config import (
    CHOICES,
    DEMO_BACKBONE,
    DEMO_WEIGHTS,
    SCHEDULE_FIELDS,
    SEED_EPOCHS,
    TrainConfig,
    coerce,
    field_names,
    field_types,
    flag,
    missing_class_weights,
    scale_schedule,
    weights_file,
)
from trainable.errors import UserError, yaml_error_line

# A CPU-sized recipe for the built-in synthetic data: the seed's staged recipe at 48 px for 12
# epochs, every schedule epoch scaled from the seed's 50 (warmup 1, head-only until 2, partial
# with the LR bump until 5, sampler off and tail focal at 4, restart at 6, resize at 7, light
# phase at 10), on a tiny timm backbone pretrained offline on a different synthetic task
# (python -m trainable.data.demo.pretrain; shipped, loaded through --pretrained-path like a user's
# weights). The balanced sampler without class weights on top, as the seed advises for a
# severe imbalance ("alpha None: no class weights, the sampler already balances").
DEMO_RECIPE: dict = {
    "demo": True,
    "backbone": "test_resnet",
    "pretrained": True,
    "pretrained_path": DEMO_WEIGHTS,
    "image_size": 48,
    "progressive_image_size": 56,
    "epochs": 12,
    "batch_size": 64,
    "lr": 2e-3,
    "num_workers": 0,
    "balance_sampler": True,
    "use_class_weights": False,
    "save_dir": "checkpoints/demo",
}
# `--demo --no-pretrained`: a from-scratch recipe. A head-only stage on a random backbone
# learns nothing and warmup protects no pretrained features, so everything trains from epoch 1.
DEMO_SCRATCH: dict = {"stage2_epoch": 0, "stage3_epoch": 1, "warmup_epochs": 0}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per TrainConfig field (default=SUPPRESS, so we know which were given)."""
    group = parser.add_argument_group("training configuration (TrainConfig)")
    group.add_argument("--config", dest="config_file", metavar="FILE.yaml", default=argparse.SUPPRESS,
                       help="a saved TrainConfig (e.g. an exported best.yaml); flags override it")
    types = field_types()
    for f in TrainConfig.__dataclass_fields__.values():
        kwargs: dict = {"default": argparse.SUPPRESS, "help": f.metadata.get("help", "")}
        if types[f.name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["help"] += f" (default {f.default})"
        else:
            kwargs["type"] = types[f.name]
            kwargs["metavar"] = f.name.split("_")[-1].upper() if f.name not in CHOICES else None
            if f.name in CHOICES:
                kwargs["choices"] = CHOICES[f.name]
            kwargs["help"] += f" (default {f.default})"
        group.add_argument(flag(f.name), dest=f.name, **kwargs)


def read_yaml_config(path: str) -> dict:
    import yaml

    file = Path(path)
    if file.is_dir():
        raise UserError(f"--config {path} is a directory; pass the YAML file itself (e.g. an exported best.yaml, "
                        f"or a run's config.yaml)")
    if not file.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"--config {path} is not a text file (not UTF-8); pass a TrainConfig YAML "
                        f"(e.g. an exported best.yaml)") from None
    except OSError as exc:
        raise UserError(f"--config {path} cannot be read ({exc.strerror}); check its permissions") from None
    except yaml.YAMLError as exc:
        line = yaml_error_line(exc)
        where = f" line {line}" if line else ""
        raise UserError(f"--config {path}:{where} is not valid YAML") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: expected a mapping of TrainConfig fields")
    unknown = sorted(set(values) - set(field_names()))
    if unknown:
        raise UserError(f"--config {path}: unknown field(s) {', '.join(unknown)}")
    if values.get("resume") is not None:  # resuming loads the checkpoint's own config: it is a flag, not a knob
        raise UserError(f"--config {path}: `resume: {values['resume']}` is not read from a config file; "
                        f"pass --resume {values['resume']} on the command line (or delete the line)")
    return {k: coerce(k, v, f"--config {path}") for k, v in values.items()}


def _layer(values: dict, new: dict, keep: set[str]) -> dict:
    """Put `new` over `values`, scaling schedule epochs not in `keep` if the epoch count moves."""
    merged = dict(values)
    if "epochs" in new and new["epochs"] != values["epochs"]:
        kept = {k: new[k] for k in keep if k in new}  # so stage ordering fixes see the kept values
        merged = scale_schedule({**merged, **kept}, values["epochs"], new["epochs"], keep=keep)
    merged.update(new)
    return merged


def resolve_config(ns: argparse.Namespace, checkpoint_config: dict | None = None,
                   prepare_demo: bool = True) -> TrainConfig:
    """The TrainConfig a command line asks for, validated. Raises UserError."""
    explicit = {k: v for k, v in vars(ns).items() if k in TrainConfig.__dataclass_fields__}
    values = TrainConfig().to_dict()
    saved: dict | None = None
    if getattr(ns, "config_file", None):
        saved = read_yaml_config(ns.config_file)
    elif checkpoint_config is not None:
        saved = {k: v for k, v in checkpoint_config.items() if k in TrainConfig.__dataclass_fields__}

    demo = explicit.get("demo", saved.get("demo", False) if saved else False)
    if demo:
        values = _layer(values, DEMO_RECIPE, keep=set())
    if saved:  # a partial config (`epochs: 2` alone) scales the schedule as --epochs 2 does
        values = _layer(values, saved, keep=set(saved) & set(SCHEDULE_FIELDS))
    keep = set(explicit) & set(SCHEDULE_FIELDS)
    if checkpoint_config is not None and not getattr(ns, "config_file", None):
        keep = set(SCHEDULE_FIELDS)  # resuming: the run's own switch-points have partly happened
    values = _layer(values, explicit, keep=keep)
    if demo and prepare_demo:
        values = _with_demo_paths(values, explicit)
    typed = explicit.get("class_weights")
    if typed and not Path(typed).exists():  # only the default location may be absent, never a typed one
        raise missing_class_weights(typed)
    cfg = TrainConfig.from_dict(values, source="flags").validate()
    return cfg


def _with_demo_paths(values: dict, explicit: dict) -> dict:
    """The demo dataset's paths for the path flags not given; generated only if one is needed."""
    from trainable.data.demo.dataset import PATH_FIELDS, ensure_demo_dataset, layout_paths

    if explicit.get("pretrained") is False:
        scratch = {k: v for k, v in DEMO_SCRATCH.items() if k not in explicit}
        if "stage2_epoch" in explicit:  # a stage 2 given keeps the recipe's stage 3 after it
            scratch.pop("stage3_epoch", None)
        values = {**values, **scratch}
    elif values["pretrained"] and weights_file(values["pretrained_path"]) == str(DEMO_BACKBONE) and not DEMO_BACKBONE.is_file():
        raise UserError(f"the demo backbone {DEMO_BACKBONE} is missing: rebuild it with "
                        f"`python -m trainable.data.demo.pretrain`, or pass --no-pretrained")
    if all(k in explicit for k in PATH_FIELDS):  # the demo recipe on data of the user's own
        return values
    paths = layout_paths(ensure_demo_dataset(seed=0))
    return {**values, **{k: str(v) for k, v in paths.items() if k not in explicit}}


def scaled_note(cfg: TrainConfig) -> str | None:
    """Tell the user when schedule epochs were scaled away from the seed's 50-epoch defaults."""
    if cfg.epochs == SEED_EPOCHS:
        return None
    return f"epochs={cfg.epochs}: schedule epochs not given explicitly are scaled from the seed's {SEED_EPOCHS}"
