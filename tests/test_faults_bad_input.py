"""Bad input through run_search.py: one `error:` line naming the problem and the fix, exit 2, no
traceback, nothing written (no experiment dir, no MLflow store, no decoded-image cache).

One real process per place a check runs; the other cases through main() in this process.
(python -m trainable: tests/test_train_cli_bad_input.py; importers: tests/test_importers.py;
unknown space, stage order, missing data dir, --resume of an unknown name through
run_search.py: tests/test_search_e2e.py.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    REPO,
    corrupt_first_image,
    delete_first_image,
    edit_train_csv,
    free_port,
    replace_row,
    subprocess_env,
    tiny_flags,
)

from trainable.data.demo.dataset import layout_paths

RUN_SEARCH = str(REPO / "run_search.py")


def _a_file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("a file where a directory should be")
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _symlinked_row(root: Path, tmp: Path) -> None:
    """A row naming a file inside train/ that is a symlink to a file outside the data root."""
    outside = _write(tmp / "secret.txt", "outside the data root")
    (Path(layout_paths(root)["train_dir"]) / "leaf.png").symlink_to(outside)
    edit_train_csv(root, lambda lines: replace_row(lines, "image", "leaf.png"))


def _not_a_resumable_search(storage: Path) -> list[str]:
    (storage / "stray").mkdir(parents=True)
    (storage / "stray" / "notes.txt").write_text("not a search")
    return ["--resume", "stray", "--storage-path", str(storage)]


BAD_SEARCH_INPUT = {
    "corrupt image": (lambda root, tmp: corrupt_first_image(root), "cannot be decoded"),
    "missing image file": (lambda root, tmp: delete_first_image(root), "not found"),
    "csv without the label column": (
        lambda root, tmp: edit_train_csv(root, lambda ls: [ls[0].replace("label_61", "label"), *ls[1:]]), "label_61"),
    "label outside 0..60": (lambda root, tmp: edit_train_csv(root, lambda ls: replace_row(ls, "label_61", "75")), "75"),
    "relative path escaping the data root": (
        lambda root, tmp: edit_train_csv(root, lambda ls: replace_row(ls, "image", "../../etc/passwd")), "stay inside"),
    "absolute path outside the data root": (
        lambda root, tmp: edit_train_csv(root, lambda ls: replace_row(ls, "image", "/etc/passwd")), "stay inside"),
    "symlink out of the data root": (lambda root, tmp: _symlinked_row(root, tmp), "stay inside"),
    "malformed space yaml": (
        lambda root, tmp: ["--space", str(_write(tmp / "space.yaml", "lr: {type: float, low: 1\n"))], "not valid YAML"),
    "unknown backbone": (lambda root, tmp: ["--backbone", "resnet_does_not_exist"], "unknown --backbone"),
    "unwritable storage path": (
        lambda root, tmp: ["--storage-path", str(_a_file(tmp) / "results")], "not a writable directory"),
    "unreachable mlflow server": (
        lambda root, tmp: ["--mlflow-uri", f"http://127.0.0.1:{free_port()}"], "cannot reach the MLflow tracking server"),
    "mlflow database that is not one": (
        lambda root, tmp: ["--mlflow-uri", f"sqlite:///{_write(tmp / 'notes.db', 'plain text')}"],
        "is not an SQLite database"),
    "pretrained weights file that is not a checkpoint": (
        lambda root, tmp: ["--pretrained", "--pretrained-path", str(_write(tmp / "weights.pth", "not a checkpoint"))],
        "not a readable weights file"),
    "pretrained weights unavailable offline": (
        lambda root, tmp: ["--pretrained", "--backbone", "resnet18"], "--pretrained-path"),
    "--resume of a directory that is not a search": (None, "is not a croptune search"),
    "--cpus-per-trial beyond this machine": (lambda root, tmp: ["--cpus-per-trial", "100000"], "this machine has only"),
    "empty --name": (lambda root, tmp: ["--name", ""], "--name '': the name is empty"),
}


# Run as the real command (a warning at import or a traceback would be a second line of the
# terminal's stderr): one case per place a check runs (the data decoded on the driver, the model
# check's child process, the tracking preflight). The others call run_search.py's main() in this
# process as the command does (run_cli): the same checks without a fresh interpreter each.
OWN_PROCESS = {"corrupt image", "unknown backbone", "pretrained weights unavailable offline",
               "unreachable mlflow server"}


@pytest.mark.parametrize("case", sorted(BAD_SEARCH_INPUT))
def test_bad_search_input_is_one_line_exit_2_and_writes_nothing(case, search_data, tmp_path, monkeypatch,
                                                                bad_search):
    import shutil

    root = shutil.copytree(search_data, tmp_path / "data")
    cwd = tmp_path / "cwd"  # the default MLflow store would be cwd/mlflow.db
    cwd.mkdir()
    storage, cache = cwd / "results", tmp_path / "cache"
    make, words = BAD_SEARCH_INPUT[case]
    if make is None:
        argv = _not_a_resumable_search(storage)
    else:
        argv = tiny_flags(root, storage, "bad") + (make(root, tmp_path) or [])
    before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
    if case in OWN_PROCESS:
        proc = subprocess.run([sys.executable, RUN_SEARCH, *argv], cwd=cwd, capture_output=True, text=True,
                              env=subprocess_env(CROPTUNE_CACHE_DIR=cache), timeout=240)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        monkeypatch.setenv("CROPTUNE_CACHE_DIR", str(cache))
        code, stdout, stderr = bad_search(argv, cwd)
    assert code == 2, (stdout[-2000:], stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], stderr
    assert "Traceback" not in stdout + stderr
    assert sorted(p.relative_to(cwd) for p in cwd.rglob("*")) == before  # no experiment dir, no mlflow.db
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no decoded-image cache either


def test_unreachable_address_is_one_line_within_seconds(search_data, tmp_path, monkeypatch, cli_in_process):
    """--address where nothing listens: ray.init would retry for minutes; the search says so at once
    (the real connect() runs here, after all the other checks)."""
    import time

    import tuner.search

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, stdout, stderr = cli_in_process(tuner.search.main, tiny_flags(search_data, cwd / "results", "addr")
                                          + ["--address", address])
    assert time.monotonic() - started < 60  # Ray's own retries took minutes
    assert code == 2, (stdout[-2000:], stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --address {address}: no Ray cluster listens there")
    assert "`ray start --head`" in lines[0]
    assert not (cwd / "results").exists() and not (cwd / "mlflow.db").exists()
