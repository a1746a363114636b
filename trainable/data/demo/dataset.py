"""The built-in synthetic dataset: a long-tailed 61-class "leaf" dataset in the seed layout.

    ROOT/train/<label>_<n>.png             ROOT/val/<label>_<n>.png
    ROOT/metadata/train_metadata.csv       image,label_61,crop,disease,severity
    ROOT/metadata/val_metadata.csv
    ROOT/metadata/class_weights.csv        label_61,weight (inverse train frequency, normalised)

Train counts fall geometrically from max_per_class to min_per_class over the classes taken in a
seeded shuffled order (a long tail, max/min >= 20 with the defaults); val follows the train
distribution (val_fraction of each class, at least VAL_MIN images), or has val_per_class images
of every class when that is given. Each image is drawn from its own seed (seed, split, label, index) by
trainable.data.demo.leaves, so the dataset is the same bytes for the same arguments.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from trainable.data import taxonomy
from trainable.data.demo.leaves import render
from trainable.data.image_cache import cache_root, check_cache_root
from trainable.data.metadata import class_counts, compute_class_weights, write_csv_atomic
from trainable.errors import UserError

DEMO_VERSION = "v3"  # bump when the generator's output changes
# val_per_class None: val follows the train distribution (val_fraction of each class's train
# count, at least VAL_MIN), as the AI Challenger val split does.
# Sized so the demo recipe (12 epochs) lands at 50-95 % val accuracy (bench D1 checks it): far
# fewer images per class leave it well below (bench/README.md).
DEFAULTS = {"max_per_class": 250, "min_per_class": 12, "val_per_class": None, "val_fraction": 0.2, "image_size": 72}
VAL_MIN = 2
_SPLIT_CODE = {"train": 0, "val": 1}
POOL_MIN_IMAGES = 400  # draw in worker processes from this many images of a split


PATH_FIELDS = ("train_dir", "val_dir", "train_meta", "val_meta", "class_weights")  # what layout_paths fills


def layout_paths(root) -> dict[str, str]:
    """TrainConfig path fields (train_dir, val_dir, train_meta, val_meta, class_weights) under root."""
    root = Path(root)
    meta = root / "metadata"
    return {
        "train_dir": str(root / "train"),
        "val_dir": str(root / "val"),
        "train_meta": str(meta / "train_metadata.csv"),
        "val_meta": str(meta / "val_metadata.csv"),
        "class_weights": str(meta / "class_weights.csv"),
    }


def train_counts(seed: int, max_per_class: int, min_per_class: int) -> np.ndarray:
    """int64 [61]: geometric from max_per_class down to min_per_class over a seeded class order."""
    ranks = np.arange(taxonomy.NUM_CLASSES) / (taxonomy.NUM_CLASSES - 1)
    by_rank = np.round(max_per_class * (min_per_class / max_per_class) ** ranks).astype(np.int64)
    order = np.random.default_rng([seed, 7919]).permutation(taxonomy.NUM_CLASSES)
    counts = np.empty(taxonomy.NUM_CLASSES, dtype=np.int64)
    counts[order] = by_rank
    return counts


def val_counts_for(counts: np.ndarray, val_per_class: int | None, val_fraction: float) -> np.ndarray:
    """int64 [61]: val_per_class of every class, or (None) val_fraction of the train counts, >= VAL_MIN."""
    if val_per_class is not None:
        return np.full(taxonomy.NUM_CLASSES, val_per_class, dtype=np.int64)
    return np.maximum(VAL_MIN, np.round(counts * val_fraction)).astype(np.int64)


def _write_class(task: tuple[Path, str, int, int, int, int]) -> list[list]:
    """Draw and save one class's images of a split; return their metadata rows."""
    folder, split, label, count, seed, image_size = task
    info = taxonomy.CLASSES[label]
    rows = []
    for index in range(count):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], label, index])
        name = f"{label:02d}_{index:04d}.png"
        Image.fromarray(render(label, rng, image_size)).save(folder / name, optimize=False)
        rows.append([name, label, info.crop, info.disease, info.severity])
    return rows


def _write_split(root: Path, split: str, counts: np.ndarray, seed: int, image_size: int) -> list[list]:
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    tasks = [(folder, split, label, int(count), seed, image_size) for label, count in enumerate(counts)]
    workers = min(4, os.cpu_count() or 1)
    if workers < 2 or counts.sum() < POOL_MIN_IMAGES:  # small sets: a pool costs more than it saves
        per_class = list(map(_write_class, tasks))
    else:  # every image has its own seed, so the bytes do not depend on the pool
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with context.Pool(workers) as pool:
            per_class = pool.map(_write_class, tasks, chunksize=1)
    return [row for rows in per_class for row in rows]


def write_synthetic_dataset(root, *, seed: int = 0, max_per_class: int = DEFAULTS["max_per_class"],
                            min_per_class: int = DEFAULTS["min_per_class"],
                            val_per_class: int | None = DEFAULTS["val_per_class"],
                            val_fraction: float = DEFAULTS["val_fraction"],
                            image_size: int = DEFAULTS["image_size"]) -> Path:
    """Write the synthetic dataset in the seed layout under root (created); return root."""
    if not 1 <= min_per_class <= max_per_class:
        raise UserError(f"demo data: need 1 <= min_per_class ({min_per_class}) <= max_per_class ({max_per_class})")
    if val_per_class is not None and val_per_class < 1:
        raise UserError(f"demo data: val_per_class must be at least 1, not {val_per_class}")
    if val_per_class is None and not 0 < val_fraction <= 1:
        raise UserError(f"demo data: val_fraction must be in (0, 1], not {val_fraction}")
    if image_size < 16:
        raise UserError(f"demo data: image_size must be at least 16 pixels, not {image_size}")
    root = Path(root)
    counts = train_counts(seed, max_per_class, min_per_class)
    header = ["image", "label_61", "crop", "disease", "severity"]
    paths = layout_paths(root)
    train_rows = _write_split(root, "train", counts, seed, image_size)
    val_counts = val_counts_for(counts, val_per_class, val_fraction)
    val_rows = _write_split(root, "val", val_counts, seed, image_size)
    write_csv_atomic(Path(paths["train_meta"]), header, train_rows)
    write_csv_atomic(Path(paths["val_meta"]), header, val_rows)
    weights = compute_class_weights(class_counts(np.array([row[1] for row in train_rows])))
    write_csv_atomic(Path(paths["class_weights"]), ["label_61", "weight"],
                     [[label, f"{weight:.6f}"] for label, weight in enumerate(weights)])
    return root


def _remove_stale(parent: Path, prefix: str, older_than_s: float = 3600) -> None:
    """Delete temp dirs of interrupted generations (older than an hour, so never a live one)."""
    for stale in parent.glob(f".{prefix}.tmp-*"):
        try:
            if time.time() - stale.stat().st_mtime > older_than_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def ensure_demo_dataset(seed: int = 0) -> Path:
    """The demo dataset for seed, generated once into the cache dir; prints and returns its path."""
    parent = cache_root()
    name = f"demo-{DEMO_VERSION}-seed{seed}"
    final = parent / name
    if (final / "metadata" / "class_weights.csv").is_file():
        print(f"demo data: {final}", flush=True)
        return final
    if final.exists():
        raise UserError(f"{final} exists but is not a complete demo dataset; delete it and run again")
    check_cache_root()  # a file or read-only CROPTUNE_CACHE_DIR: one line before anything is written
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(parent, name)
    print(f"demo data: generating {final} (once; reused by later runs)", flush=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
    try:
        write_synthetic_dataset(tmp, seed=seed, **DEFAULTS)
        try:
            os.rename(tmp, final)  # atomic: a half-written dataset never has the final name
        except OSError:
            if not (final / "metadata" / "class_weights.csv").is_file():
                raise
            # another process finished first: use its copy (identical bytes), drop ours
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"demo data: {final} (generated in {time.monotonic() - started:.0f} s)", flush=True)
    return final
