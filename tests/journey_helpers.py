"""Helpers for tests/test_journeys.py: a small real dataset in the seed layout, a user's folder,
and the README's commands run there as real processes with default flags.

A journey runs in its own folder (the user's working directory): `data/cleaned/...` (the data
flags' defaults), `ray_results/` (the default --storage-path), `mlflow.db` (the default
tracking store), `checkpoints/` (the default --save-dir), and its own $CROPTUNE_CACHE_DIR.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from fault_helpers import REPO, finish, start, subprocess_env
from PIL import Image

# Ten of the 61 classes, long-tailed (train images per class), two validation images each.
LABELS = (0, 6, 13, 19, 27, 33, 40, 46, 52, 60)
TRAIN_COUNTS = (12, 10, 8, 7, 6, 5, 4, 4, 3, 3)
VAL_PER_CLASS = 2
# What keeps a run small; every other flag stays at the user's default (--num-workers 4,
# batch size 32, warmup 5, the seed's schedule rescaled, device auto, default paths and names).
# 96/112 px, not 32: from 96 px the batched augmentation runs on its thread pool, as at the
# default 224/256 (trainable.train.augment._POOL_MIN_SIZE), and on 82 images it costs no more.
SMALL = ["--backbone", "test_resnet", "--no-pretrained", "--image-size", "96", "--progressive-image-size", "112"]


def write_seed_dataset(root: Path, seed: int = 0) -> Path:
    """data/cleaned in the seed layout: PNG and JPEG leaves of ~120 px (not square), metadata CSVs
    with `image` and `label_61`, no class_weights.csv (computed from train counts)."""
    rng = np.random.default_rng(seed)
    cleaned = root / "data" / "cleaned"
    (cleaned / "metadata").mkdir(parents=True)
    for split in ("train", "val"):
        (cleaned / split).mkdir()
        rows = []
        for index, (label, count) in enumerate(zip(LABELS, TRAIN_COUNTS, strict=True)):
            colour = rng.integers(40, 216, size=3)
            for n in range(count if split == "train" else VAL_PER_CLASS):
                height, width = 112 + int(rng.integers(0, 16)), 112 + int(rng.integers(0, 32))
                pixels = np.clip(colour + rng.normal(0, 30, size=(height, width, 3)), 0, 255).astype(np.uint8)
                pixels[height // 4: height // 2, :, index % 3] = 255 - colour[index % 3]  # a class-specific band
                name = f"{label:02d}_{n:03d}." + ("png" if index % 2 == 0 else "jpg")
                Image.fromarray(pixels).save(cleaned / split / name)
                rows.append({"image": name, "label_61": label})
        with open(cleaned / "metadata" / f"{split}_metadata.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "label_61"])
            writer.writeheader()
            writer.writerows(rows)
    return cleaned


def user_folder(dataset: Path, folder: Path) -> Path:
    """A user's working directory holding a copy of the dataset (mtimes kept) and the repo's
    run_search.py (the README's commands say `python run_search.py`, run from the checkout)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(dataset / "data", folder / "data")
    (folder / "run_search.py").symlink_to(REPO / "run_search.py")
    return folder


def user_env(cache: Path | None = None, home: Path | None = None) -> dict:
    """The environment of a user's shell: `python` is this interpreter, no tracking URI set,
    offline (no weights download), croptune's cache in `cache`, or (cache None) at its default
    place, ~/.cache/croptune, with HOME=`home`."""
    env = subprocess_env()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "CROPTUNE_TEST_FAULT_DIR", "CROPTUNE_CACHE_DIR"):
        env.pop(key, None)
    if cache is not None:
        env["CROPTUNE_CACHE_DIR"] = str(cache)
    if home is not None:
        env["HOME"] = str(home)
    return env


def train(folder: Path, env: dict, *flags: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m trainable FLAGS` in the user's folder."""
    return subprocess.run([sys.executable, "-m", "trainable", *flags], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=timeout)


def search_argv(*flags: str) -> list[str]:
    return [sys.executable, "run_search.py", *flags]


def shell(line: str, folder: Path, env: dict, timeout: float = 400) -> subprocess.CompletedProcess:
    """A printed command pasted into a shell in the user's folder, as printed."""
    return subprocess.run(["bash", "-c", line], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout)


def printed_command(stdout: str, starts: str) -> str:
    """The one command line in `stdout` that starts with `starts` (after an optional label)."""
    found = [line[line.index(starts):].strip() for line in stdout.splitlines() if starts in line]
    assert len(found) == 1, f"{len(found)} lines with {starts!r}:\n{stdout[-3000:]}"
    return found[0]


# Lines Ray forwards from its worker processes: "(train_trial pid=123) ..." (colour codes first).
_WORKER_LINE = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")


def own_lines(stderr: str) -> str:
    """stderr without the lines Ray forwards from worker processes (a trial's failure is checked
    through the experiment instead; Ray's workers print shutdown noise of their own)."""
    return "\n".join(line for line in stderr.splitlines() if not _WORKER_LINE.match(line))


def assert_ok(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in own_lines(proc.stderr), f"{what}: exit 0 with a traceback\n{proc.stderr[-4000:]}"


def experiments(folder: Path) -> list[Path]:
    """The Tune experiments under the default --storage-path."""
    root = folder / "ray_results"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def run_together(argvs: list[list[str]], folder: Path, env: dict, timeout: float) -> list[tuple[int, str, str]]:
    """Start every command at the same moment in one folder; (exit code, stdout, stderr) each."""
    started = [start(argv, folder, env, f"together{i}") for i, argv in enumerate(argvs)]
    codes = [finish(process, timeout) for process, _, _ in started]
    return [(code, out.read_text(), err.read_text()) for code, (_, out, err) in zip(codes, started, strict=True)]
