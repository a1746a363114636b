"""ModelEMA: decay arithmetic and timm's warmup, buffers copied, state round trip, cosine switch;
and a short real run on which the EMA validates about as well as the raw weights."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from trainable.cli import format_epoch
from trainable.cli_config import add_config_arguments, resolve_config
from trainable.config import TrainConfig
from trainable.data.dataset import load_data
from trainable.model.ema import ModelEMA
from trainable.model.networks import build_model
from trainable.train.loop import fit


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def test_decay_math_on_parameters_buffers_copied():
    model = tiny()
    ema = ModelEMA(model, decay=0.9, warmup=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()
    model(torch.randn(8, 2) * 4 + 2)  # moves the BN running stats, counts a batch
    current = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update(model)
    shadow = ema.module.state_dict()
    params = {name for name, _ in model.named_parameters()}
    for key, value in current.items():
        if key in params:
            assert torch.allclose(shadow[key], 0.9 * start[key] + 0.1 * value), key
        else:  # BN running stats and num_batches_tracked follow the live model
            assert torch.equal(shadow[key], value), key
    ema.update(model)  # second step: shadow = 0.9 * shadow + 0.1 * current
    expected = 0.9 * (0.9 * start["0.weight"] + 0.1 * current["0.weight"]) + 0.1 * current["0.weight"]
    assert torch.allclose(ema.module.state_dict()["0.weight"], expected)
    assert torch.equal(model.state_dict()["0.weight"], current["0.weight"])  # model untouched


def test_warmup_follows_timms_formula_and_counts_updates():
    model = tiny()
    ema = ModelEMA(model, decay=0.999)
    start = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert ema.current_decay() == 0.0
    ema.update(model)  # the first update copies: nothing of the initial weights is left
    assert torch.equal(ema.module[0].weight, model[0].weight) and not torch.equal(start, model[0].weight)
    decays = []
    for n in range(2, 6):
        decays.append(ema.current_decay())
        ema.update(model)
        assert ema.updates == n
    assert decays == pytest.approx([1 - n ** (-2 / 3) for n in range(2, 6)])
    ema.updates = 40_000  # past ~31,600 steps the configured decay holds
    assert ema.current_decay() == 0.999


def test_shadow_is_separate_frozen_and_in_eval():
    model = tiny()
    ema = ModelEMA(model, decay=0.99)
    assert ema.module is not model and not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_state_dict_round_trip():
    model = tiny()
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model[0].bias.fill_(3.0)
    ema.update(model)
    ema.update(model)
    other = ModelEMA(tiny(), decay=0.5)
    other.load_state_dict(ema.state_dict(), ema.updates)
    assert other.updates == 2 and other.current_decay() == ema.current_decay()
    for key, value in ema.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)
    old = ModelEMA(tiny(), decay=0.5)
    old.load_state_dict(ema.state_dict(), None)  # a checkpoint from before the warmup keeps its fixed decay
    assert old.current_decay() == 0.5


def test_cosine_switch_reaches_the_shadow():
    cfg = TrainConfig(backbone="test_resnet", pretrained=False, use_cosine_classifier=True)
    model = build_model(cfg)
    ema = ModelEMA(model, decay=0.999, warmup=False)
    with torch.no_grad():  # the shadow's own linear head points elsewhere
        ema.module.classifier.weight.add_(torch.randn_like(ema.module.classifier.weight))
    warm = torch.nn.functional.normalize(ema.module.classifier.weight, dim=1)
    model.activate_cosine()
    ema.update(model)
    assert ema.module.cosine_active
    expected = 0.999 * warm + 0.001 * model.cosine_head.weight
    assert torch.allclose(ema.module.cosine_head.weight, expected, atol=1e-6)
    restored = ModelEMA(build_model(cfg), decay=0.999, warmup=False)
    restored.load_state_dict(ema.state_dict())
    assert restored.module.cosine_active


# A short run as in the issue: ~70 optimizer steps on a small real PNG dataset, default recipe.
LABELS = (0, 9, 18, 27, 36, 45)


def write_small_dataset(root, train_per_class: int, val_per_class: int, size: int = 32) -> list[str]:
    """Six classes of noisy colour fields with a class-specific band, in the seed layout; the data flags."""
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 216, size=(len(LABELS), 3))
    (root / "metadata").mkdir(parents=True)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        (root / split).mkdir()
        rows = []
        for index, label in enumerate(LABELS):
            for n in range(count):
                pixels = np.clip(colours[index] + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
                pixels[size // 4: size // 2, :, index % 3] = 255 - colours[index, index % 3]
                Image.fromarray(pixels).save(root / split / f"{label:02d}_{n:03d}.png")
                rows.append({"image": f"{label:02d}_{n:03d}.png", "label_61": label})
        with open(root / "metadata" / f"{split}_metadata.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "label_61"])
            writer.writeheader()
            writer.writerows(rows)
    return ["--train-dir", str(root / "train"), "--val-dir", str(root / "val"),
            "--train-meta", str(root / "metadata" / "train_metadata.csv"),
            "--val-meta", str(root / "metadata" / "val_metadata.csv")]


def test_short_run_ema_validates_about_as_well_as_the_raw_weights(tmp_path):
    flags = write_small_dataset(tmp_path / "data", train_per_class=12, val_per_class=8)
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    cfg = resolve_config(parser.parse_args(flags + [
        "--backbone", "test_resnet", "--no-pretrained", "--image-size", "32", "--progressive-image-size", "32",
        "--batch-size", "8", "--epochs", "8", "--num-workers", "0", "--device", "cpu", "--use-ema"]),
        prepare_demo=False)
    results = list(fit(cfg, load_data(cfg, progress=False)))
    metrics = [r.metrics for r in results]
    last = metrics[-1]
    assert last["val_acc_raw"] >= 50.0, metrics  # the raw weights learnt: the comparison means something
    assert abs(last["val_acc"] - last["val_acc_raw"]) <= 10.0, [(m["val_acc"], m["val_acc_raw"]) for m in metrics]
    # best_custom.pth follows the EMA's val acc, which is no longer stuck at the first epoch's
    best = max(metrics, key=lambda m: m["val_acc"])
    assert results[-1].state["best_epoch"] == best["epoch"] > 1
    assert best["val_acc"] >= max(m["val_acc_raw"] for m in metrics) - 10.0
    assert results[-1].state["ema_updates"] == 8 * (6 * 12 // 8)  # one update per optimizer step
    line = format_epoch(cfg, last)
    assert f"Acc {last['val_acc']:.2f}% (EMA; raw {last['val_acc_raw']:.2f}%)" in line
