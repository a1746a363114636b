"""Helpers shared by the tests (test modules import helpers from here, never from each other).

- processes: start / finish / wait_for a real command, its environment (subprocess_env);
- a Tune experiment and an MLflow store read back (tune_trials, trial_dir, metric_rows, search_runs);
- a search in this process (search_in_process) on tiny synthetic data (tiny_flags);
- hand-made datasets: make_dataset (a few solid-colour PNGs), the seed layout for journeys
  (write_seed_dataset), and edits that break one (edit_train_csv, corrupt_first_image, ...);
- a user's folder and shell for the journeys (user_folder, user_env, shell, printed_command, ...).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from trainable.config import TrainConfig
from trainable.data.demo.dataset import layout_paths

REPO = Path(__file__).resolve().parents[1]
# What fit() reports that must not depend on the clock or on which process ran it.
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "tail_acc", "macro_f1", "lr",
                  "stage", "image_size")


# ----------------------------------------------------------------- real processes
def wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    """Poll until predicate() is true; fail naming `what` (and early if `process` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} while waiting for {what}")
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def subprocess_env(**extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "HF_HUB_OFFLINE": "1"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start(argv: list[str], cwd: Path, env: dict, log_name: str) -> tuple[subprocess.Popen, Path, Path]:
    """Start a command in its own session (a terminal's foreground group); stdout/stderr to files."""
    out, err = cwd / f"{log_name}.out", cwd / f"{log_name}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr, start_new_session=True)
    return process, out, err


def finish(process: subprocess.Popen, timeout: float) -> int:
    """Wait for the process; on timeout kill its whole session (Ray included) and fail."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError(f"{process.args[:3]} did not finish within {timeout:.0f} s") from None


# ----------------------------------------------------------------- reading a Tune experiment back
def tune_trials(experiment: Path) -> list:
    """The experiment's Tune trials as a fresh process reads them back, in creation order."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(experiment)).trials
    return sorted(trials, key=lambda trial: int(trial.experiment_tag.split("_")[0]))


def trial_dir(experiment: Path, trial_id: str) -> Path:
    matches = [p for p in experiment.iterdir() if p.is_dir() and f"_{trial_id}_" in p.name]
    assert len(matches) == 1, f"trial {trial_id}: {matches}"
    return matches[0]


def progress(trial_dir: Path):
    import pandas as pd

    path = trial_dir / "progress.csv"
    if not path.is_file() or not path.read_text().strip():
        return pd.DataFrame()
    return pd.read_csv(path, dtype={"trial_id": str})  # "42957e50" is a trial id, not 4.2957e+54


def metric_rows(trial_dir: Path) -> list[dict]:
    """The trial's per-epoch metrics (METRIC_COLUMNS), in report order."""
    frame = progress(trial_dir)
    return [] if frame.empty else frame[list(METRIC_COLUMNS)].to_dict("records")


# ----------------------------------------------------------------- MLflow
def search_runs(uri: str, search_name: str, experiment: str = "croptune"):
    """(parent run, {trial_id: [child runs]}) of one search in an MLflow store."""
    from tuner.tracking import runs as tags
    from tuner.tracking.store import client_for

    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} in {uri}"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(tags.SEARCH_TAG) == search_name
               and r.data.tags.get(tags.ROLE_TAG) == "search"]
    assert len(parents) == 1, f"{len(parents)} parent runs for {search_name}"
    parent = parents[0]
    children: dict[str, list] = {}
    for run in runs:
        if run.data.tags.get(tags.PARENT_TAG) == parent.info.run_id:
            children.setdefault(run.data.tags.get(tags.TRIAL_TAG), []).append(run)
    return parent, children


def metric_steps(uri: str, run_id: str, key: str = "epoch") -> list[int]:
    from tuner.tracking.store import client_for

    return sorted(m.step for m in client_for(uri).get_metric_history(run_id, key))


# ----------------------------------------------------------------- searches on tiny synthetic data
EPOCHS = 2  # what tiny_flags trains per trial


def layout_flags(root: Path) -> list[str]:
    """The data flags (--train-dir ...) of a dataset in the seed layout under root."""
    flags = []
    for key, value in layout_paths(root).items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def tiny_flags(root: Path, storage: Path, name: str) -> list[str]:
    """A search of 32 px test_resnet trials, EPOCHS epochs each, on CPU, into storage/name."""
    return layout_flags(root) + [
        "--backbone", "test_resnet", "--no-pretrained", "--image-size", "32", "--progressive-image-size", "40",
        "--batch-size", "32", "--epochs", str(EPOCHS), "--num-workers", "0", "--device", "cpu",
        "--storage-path", str(storage), "--name", name, "--space", "stage_epochs", "--grace-period", "1",
        "--reduction-factor", "2"]


def search_in_process(argv: list[str]) -> tuple[int, str]:
    """run_search.py's search in this process (its MLflow hooks included); (exit code, stdout)."""
    from trainable.errors import run_cli
    from tuner.search import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = run_cli(main, argv)
    return code, buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def json_file(path: Path) -> dict:
    return json.loads(path.read_text())


# ----------------------------------------------------------------- small hand-made datasets
SIZE = 16  # make_dataset's image size


def write_png(path: Path, colour, size=(20, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(colour)).save(path)


def make_dataset(root: Path, train_labels=(0, 0, 0, 5, 5, 60), val_labels=(0, 5, 60), header="image,label_61",
                 extra=None) -> TrainConfig:
    """A tiny seed-layout dataset with one solid-colour PNG per row; returns a TrainConfig for it."""
    for split, labels in (("train", train_labels), ("val", val_labels)):
        lines = [header]
        for i, label in enumerate(labels):
            name = f"img_{i}.png"
            write_png(root / split / name, (label * 4, i * 10, 100))
            lines.append(f"{name},{label}" + (f",{extra(label)}" if extra else ""))
        meta = root / "metadata" / f"{split}_metadata.csv"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text("\n".join(lines) + "\n")
    return config_for(root)


def config_for(root: Path, **changes) -> TrainConfig:
    return TrainConfig(train_dir=str(root / "train"), val_dir=str(root / "val"),
                       train_meta=str(root / "metadata" / "train_metadata.csv"),
                       val_meta=str(root / "metadata" / "val_metadata.csv"),
                       class_weights="", image_size=SIZE, progressive_image_size=SIZE, num_workers=0, **changes)


def cached_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()]


def edit_train_csv(root: Path, edit) -> None:
    """Rewrite the train metadata CSV of a seed-layout dataset: lines -> edit(lines)."""
    meta = Path(layout_paths(root)["train_meta"])
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join(edit(lines)) + "\n")


def replace_row(lines, column, value):
    """The CSV lines with the first data row's `column` set to value."""
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index(column)] = value
    return [lines[0], ",".join(row), *lines[2:]]


def first_image(root: Path) -> Path:
    paths = layout_paths(root)
    return Path(paths["train_dir"]) / Path(paths["train_meta"]).read_text().splitlines()[1].split(",")[0]


def corrupt_first_image(root: Path) -> None:
    first_image(root).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def delete_first_image(root: Path) -> None:
    first_image(root).unlink()


# ----------------------------------------------------------------- a user's folder (tests/test_journeys.py)
# A journey runs in its own folder (the user's working directory): data/cleaned/... (the data
# flags' defaults), ray_results/ (the default --storage-path), mlflow.db (the default tracking
# store), checkpoints/ (the default --save-dir), and its own $CROPTUNE_CACHE_DIR.
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
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "CROPTUNE_CACHE_DIR"):
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


# ---------------------------------------------------------------- exported searches
def best_config(**changes) -> TrainConfig:
    return TrainConfig(demo=True, lr=3e-4, stage2_epoch=8, stage3_epoch=22, **changes).validate()


def write_summary(root, name="stage_epochs-1", config=None, **extra):
    experiment = root / name
    experiment.mkdir(parents=True)
    summary = {"experiment": name, "storage_path": str(root), "space": "stage_epochs",
               "metric": "macro_f1", "mode": "max", "best_trial_id": "abc_00003", "best_value": 0.4217,
               "best_config": (config or best_config()).to_dict(), "num_trials": 8,
               "num_stopped_early": 5, "num_failed": 0, "epochs_consumed": 120, "wall_time_s": 33.0}
    summary.update(extra)
    (experiment / "search_summary.json").write_text(json.dumps(summary))
    return experiment
