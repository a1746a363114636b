"""Bench datasets: the demo data, stratified subsets of it, and the flags and TrainConfig that train on them.

A subset keeps `ceil(fraction x count)` (at least one) train images of each class and
`val_per_class` val images, and reuses the demo's own image files: only metadata CSVs are
written, under bench/.work/data/, so the decode cache is keyed by the same files and shared with
later bench runs. config_flags/train_config give the demo recipe on such a dataset, the way
`python -m trainable` and `run_search.py` parse it.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

from bench import profiles


def demo_root() -> Path:
    """The demo dataset's folder, generated on first use."""
    from trainable.data.demo.dataset import ensure_demo_dataset

    with contextlib.redirect_stdout(io.StringIO()):  # its "demo data: PATH" line
        return ensure_demo_dataset(seed=0)


def bench_dataset(spec: dict | None) -> dict:
    """TrainConfig path fields for a stratified subset of the demo data (None: the whole demo data)."""
    from trainable.data.demo.dataset import DEMO_VERSION, layout_paths

    root = demo_root()
    paths = layout_paths(root)
    if spec is None:
        return paths
    import numpy as np

    from trainable.data.metadata import class_counts, compute_class_weights, write_csv_atomic

    fraction, val_per_class = float(spec["fraction"]), int(spec["val_per_class"])
    repeat = int(spec.get("repeat", 1))  # list every train image this many times (GPU epochs)
    # the demo version in the name: a subset lists files of one generation of the demo data
    name = f"demo{DEMO_VERSION}-f{fraction:g}-v{val_per_class}" + (f"-r{repeat}" if repeat > 1 else "")
    folder = profiles.WORK / "data" / name / "metadata"
    out = {**paths, "train_meta": str(folder / "train_metadata.csv"), "val_meta": str(folder / "val_metadata.csv"),
           "class_weights": str(folder / "class_weights.csv")}
    if Path(out["class_weights"]).is_file():
        return out
    header, train_rows = _read_rows(paths["train_meta"])
    _, val_rows = _read_rows(paths["val_meta"])
    label_col = header.index("label_61")
    train_keep = _stratified(train_rows, label_col, lambda n: max(1, math.ceil(n * fraction))) * repeat
    val_keep = _stratified(val_rows, label_col, lambda n: min(n, val_per_class))
    write_csv_atomic(Path(out["train_meta"]), header, train_keep)
    write_csv_atomic(Path(out["val_meta"]), header, val_keep)
    counts = class_counts(np.array([int(r[label_col]) for r in train_keep]))
    weights = compute_class_weights(counts)
    write_csv_atomic(Path(out["class_weights"]), ["label_61", "weight"],
                     [[label, f"{w:.6f}"] for label, w in enumerate(weights)])
    return out


def _read_rows(path: str) -> tuple[list[str], list[list[str]]]:
    import csv

    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def _stratified(rows: list[list[str]], label_col: int, keep) -> list[list[str]]:
    by_label: dict[str, list[list[str]]] = {}
    for row in rows:
        by_label.setdefault(row[label_col], []).append(row)
    out = []
    for label in sorted(by_label, key=int):
        group = by_label[label]
        out += group[:keep(len(group))]
    return out


def config_flags(paths: dict, size: tuple[int, int] | None, epochs: int | None = None) -> list[str]:
    """Command-line flags (the TrainConfig ones) for the demo recipe on a bench dataset."""
    flags = ["--demo"]
    for key, value in paths.items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    if size is not None:
        flags += ["--image-size", str(size[0]), "--progressive-image-size", str(size[1])]
    if epochs is not None:
        flags += ["--epochs", str(epochs)]
    return flags


def train_config(paths: dict, size: tuple[int, int] | None, epochs: int | None = None, **extra):
    """The TrainConfig that `python -m trainable <config_flags(...)>` would train (demo recipe)."""
    from trainable.cli import build_parser
    from trainable.cli_config import resolve_config

    ns = build_parser().parse_args(config_flags(paths, size, epochs))
    for key, value in extra.items():
        setattr(ns, key, value)
    with contextlib.redirect_stdout(io.StringIO()):  # the demo dataset's "demo data: PATH" line
        return resolve_config(ns)
