"""`python -m trainable.data.demo.pretrain`: rebuild the demo's pretrained backbone (backbone.safetensors).

Nothing can be downloaded for the demo, so its "ImageNet" is a synthetic source task of its own:
36 classes = 6 leaf outlines x 6 surface textures that the demo's 61 classes do not use (round,
obovate, needle, deltoid, oak-lobed and kidney blades; plain, dots, ringed spots, stripes,
speckle and streaky patches; leaf and paint in random colours, not the crops'), drawn with the demo's
paint primitives but from a separate seed stream. A timm `test_resnet` (the demo's backbone)
learns it for 16 epochs (it prints its train accuracy and time); the classifier head is
dropped and the backbone is written as a safetensors state dict, loaded by the demo through
--pretrained-path like a user's weights.

Deterministic: fixed seeds and one thread, so the same torch build rebuilds the file bit for bit.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainable.data.demo.leaves import Leaf, _background, _profile, blotches, interveinal, spots, stipple
from trainable.errors import UserError, run_cli

BACKBONE = "test_resnet"
DEFAULT_OUT = Path(__file__).with_name("backbone.safetensors")
OUTLINES = ("round", "obovate", "needle", "deltoid", "oak", "kidney")
TEXTURES = ("plain", "dots", "rings", "stripes", "speckle", "streaks")
NUM_CLASSES = len(OUTLINES) * len(TEXTURES)
SOURCE_STREAM = 424242  # keeps source images apart from the demo's (seed, split, label, index) seeds
DEFAULTS = {"per_class": 128, "epochs": 16, "image_size": 48, "batch_size": 64, "lr": 3e-3, "seed": 0}


def _outline(name: str, X, Y):
    x = np.clip(X, -1, 1)
    r = np.sqrt(np.clip(1 - x * x, 0, 1))
    width = {
        "round": 0.78 * r,
        "obovate": 0.42 * r ** 0.8 * (1 + 0.5 * x),
        "needle": 0.07 * r ** 0.3,
        "deltoid": 0.62 * (1 - x) / 2 * r ** 0.25,
        "oak": 0.42 * r * (1 + 0.35 * np.sin(16 * x)),
        "kidney": 0.85 * r ** 0.6 * (1 - 0.3 * x),
    }[name]
    return _profile(X, Y, width)


def _colour(rng) -> np.ndarray:
    return rng.uniform(0.1, 0.9, size=3).astype(np.float32)


def _texture(name: str, leaf: Leaf, rng) -> None:
    if name == "dots":
        spots(leaf, int(rng.integers(12, 30)), 0.035, _colour(rng), ragged=0.1)
    elif name == "rings":
        spots(leaf, int(rng.integers(2, 5)), 0.11, _colour(rng), rings=3, rim=_colour(rng))
    elif name == "stripes":
        interveinal(leaf, rng.uniform(0.3, 0.6), _colour(rng), _colour(rng))
    elif name == "speckle":
        stipple(leaf, rng.uniform(0.08, 0.2), _colour(rng))
    elif name == "streaks":
        blotches(leaf, rng.uniform(0.2, 0.45), _colour(rng), freq=12, aniso=6, soft=0.05)


def render_source(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """A size x size x 3 uint8 image of source class `label` (outline x texture)."""
    outline, texture = OUTLINES[label // len(TEXTURES)], TEXTURES[label % len(TEXTURES)]
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    py, px = np.meshgrid(axis, axis, indexing="ij")
    angle, scale = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 0.95) * (1.4 if outline == "needle" else 1.0)
    cx, cy = (float(v) for v in rng.uniform(-0.15, 0.15, size=2))
    ca, sa = float(np.cos(angle)), float(np.sin(angle))
    X = ((px - cx) * ca + (py - cy) * sa) / scale
    Y = (-(px - cx) * sa + (py - cy) * ca) / scale
    f, veins = _outline(outline, X, Y)
    f = np.maximum(f, -1.0)
    rgb = np.broadcast_to(_colour(rng), f.shape + (3,)).astype(np.float32)
    rgb = rgb * (0.85 + 0.3 * f.clip(0, 1))[..., None]
    leaf = Leaf(X, Y, f, np.clip(veins, 0, 1), scale * size / 2, rgb, rng)
    leaf.paint(0.3 * leaf.veins * (f > 0), _colour(rng))
    _texture(texture, leaf, rng)
    grad = np.stack(np.gradient(f), axis=0)
    alpha = np.clip(0.5 + f / (np.hypot(grad[0], grad[1]) + 1e-6), 0, 1)[..., None]
    image = _background(rng, size) * (1 - alpha) + leaf.rgb * alpha
    image = image * np.float32(rng.uniform(0.7, 1.2)) + rng.normal(0, 0.03, size=image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def source_images(per_class: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW images and int64 labels of the source task, each image from its own seed."""
    images, labels = [], []
    for label in range(NUM_CLASSES):
        for index in range(per_class):
            rng = np.random.default_rng([seed, SOURCE_STREAM, label, index])
            images.append(render_source(label, rng, size))
            labels.append(label)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def pretrain(*, per_class: int, epochs: int, image_size: int, batch_size: int, lr: float, seed: int,
             log=print) -> dict[str, torch.Tensor]:
    """Train test_resnet on the source task; return its backbone state dict (no classifier)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same summation order, so the same bits every run
    try:
        return _train(per_class, epochs, image_size, batch_size, lr, seed, log)
    finally:
        torch.set_num_threads(threads)  # an in-process caller (the tests) keeps its own setting


def _train(per_class: int, epochs: int, image_size: int, batch_size: int, lr: float, seed: int,
           log) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    pad = max(2, image_size // 8)  # drawn larger, randomly cropped back: translation augmentation
    images, labels = source_images(per_class, image_size + pad, seed)
    model = timm.create_model(BACKBONE, num_classes=NUM_CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * max(1, math.ceil(len(labels) / batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        correct = total = 0
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            if len(index) < 2:
                continue  # a batch of one breaks BatchNorm
            top, left = (int(v) for v in torch.randint(0, pad + 1, (2,), generator=generator))
            x = images[index, :, top:top + image_size, left:left + image_size].float() / 255
            flip = torch.rand(len(index), generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            logits = model((x - mean) / std)
            loss = F.cross_entropy(logits, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            correct += int((logits.argmax(1) == labels[index]).sum())
            total += len(index)
        log(f"pretrain epoch {epoch + 1}/{epochs}: train acc {100 * correct / max(total, 1):.1f}%")
    return {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("fc.")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainable.data.demo.pretrain", description=__doc__.split("\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"weights file to write (default {DEFAULT_OUT})")
    for name, value in DEFAULTS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    if min(args.per_class, args.epochs, args.batch_size) < 1 or args.image_size < 16 or not args.lr > 0:
        raise UserError("--per-class, --epochs and --batch-size must be >= 1, --image-size >= 16, --lr > 0")
    out = Path(args.out)
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {out.parent} is not a writable directory; create it or choose another --out")
    from safetensors.torch import save_file

    started = time.monotonic()
    state = pretrain(**{k: getattr(args, k) for k in DEFAULTS})
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp))  # no metadata: safetensors writes its keys in hash order, not bit for bit
    tmp.replace(out)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB) in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
