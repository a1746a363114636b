"""Importers: AI Challenger JSON and class-per-folder trees into the seed layout, via the CLI."""

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainable.config import TrainConfig
from trainable.data.dataset import load_data
from trainable.data.importers import main
from trainable.errors import run_cli

REPO = Path(__file__).resolve().parents[1]


def importer(*args) -> subprocess.CompletedProcess:
    """The real command line: `python -m trainable.data.importers ARGS`."""
    return subprocess.run([sys.executable, "-m", "trainable.data.importers", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def importer_in_process(*args) -> subprocess.CompletedProcess:
    """The same entry point (run_cli(main)) in this process: faster for the many bad-input cases."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(main, [str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _jpg(path: Path, colour=(90, 140, 60)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (30, 20), colour).save(path, format="JPEG")


@pytest.fixture
def challenger(tmp_path):
    images = tmp_path / "AgriculturalDisease_trainingset" / "images"
    entries = []
    for i, label in enumerate([0, 3, 5, 60, 60, 44]):
        name = f"{i:040x}.jpg"
        _jpg(images / name, (label * 4, 100, 50))
        entries.append({"image_id": name, "disease_class": label})
    annotations = tmp_path / "AgriculturalDisease_train_annotations.json"
    annotations.write_text(json.dumps(entries))
    return images, annotations, entries


@pytest.fixture
def folders(tmp_path):
    root = tmp_path / "by_class"
    for label, names in {"0": ["a.jpg", "b.png"], "17": ["c.jpg"], "059": ["sub/d.jpg"]}.items():
        for name in names:
            _jpg(root / label / name) if name.endswith(".jpg") else Image.new("RGB", (8, 8)).save(root / label / name)
    (root / "17" / "notes.txt").write_text("not an image")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "README.md").write_text("stray file at the top level")
    return root


def _rows(csv_path: Path) -> list[list[str]]:
    return [line.split(",") for line in csv_path.read_text().splitlines()]


def test_aichallenger_import_round_trips_through_load_data(tmp_path, challenger):
    images, annotations, entries = challenger
    out = tmp_path / "cleaned"
    for split in ("train", "val"):
        done = importer("aichallenger", "--images", images, "--annotations", annotations, "--split", split,
                        "--out", out)
        assert done.returncode == 0, done.stderr
        assert "imported 6 images" in done.stdout
    rows = _rows(out / "metadata" / "train_metadata.csv")
    assert rows[0] == ["image", "label_61", "crop", "disease", "severity"]
    assert rows[2] == [entries[1]["image_id"], "3", "apple", "frogeye spot", "general"]
    assert rows[4][1:] == ["60", "tomato", "mosaic virus", "general"]
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(e["image_id"] for e in entries)
    cfg = TrainConfig(train_dir=str(out / "train"), val_dir=str(out / "val"),
                      train_meta=str(out / "metadata/train_metadata.csv"),
                      val_meta=str(out / "metadata/val_metadata.csv"),
                      class_weights="",  # the importer writes none: computed from the train counts
                      image_size=16, progressive_image_size=16, num_workers=0)
    data = load_data(cfg, progress=False)
    np.testing.assert_array_equal(data.train.labels, [0, 3, 5, 60, 60, 44])
    np.testing.assert_array_equal(data.train.crops, [0, 0, 0, 9, 9, 9])
    np.testing.assert_array_equal(data.train.severities, [0, 1, 2, 1, 1, 1])  # 44: general


def test_folders_import_keeps_relative_names(tmp_path, folders):
    out = tmp_path / "cleaned"
    done = importer("folders", "--root", folders, "--split", "train", "--out", out)
    assert done.returncode == 0, done.stderr
    rows = _rows(out / "metadata" / "train_metadata.csv")[1:]
    assert [row[:2] for row in rows] == [["0/a.jpg", "0"], ["0/b.png", "0"], ["059/sub/d.jpg", "59"],
                                         ["17/c.jpg", "17"]]
    assert rows[2][2:] == ["tomato", "yellow leaf curl virus", "serious"]
    assert (out / "train" / "059" / "sub" / "d.jpg").read_bytes() == (folders / "059" / "sub" / "d.jpg").read_bytes()
    assert not (out / "train" / "17" / "notes.txt").exists()
    # a second import of the same split refuses unless asked to overwrite
    again = importer_in_process("folders", "--root", folders, "--split", "train", "--out", out)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert importer_in_process("folders", "--root", folders, "--split", "train", "--out", out,
                               "--overwrite").returncode == 0
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging dirs left


def _bad_challenger(tmp_path, challenger, case):
    images, annotations, entries = challenger
    args = ["aichallenger", "--images", images, "--annotations", annotations, "--split", "train"]
    if case == "missing images dir":
        args[2] = tmp_path / "no-such-dir"
    elif case == "missing annotations":
        args[4] = tmp_path / "no.json"
    elif case == "malformed json":
        annotations.write_text('[{"image_id": "x.jpg", ')
    elif case == "not a list":
        annotations.write_text('{"image_id": "x.jpg"}')
    elif case == "missing key":
        annotations.write_text(json.dumps(entries[:2] + [{"image_id": entries[2]["image_id"]}]))
    elif case == "label out of range":
        annotations.write_text(json.dumps(entries[:3] + [{"image_id": entries[3]["image_id"], "disease_class": 61}]))
    elif case == "label not an integer":
        annotations.write_text(json.dumps([{"image_id": entries[0]["image_id"], "disease_class": "scab"}]))
    elif case == "image missing":
        annotations.write_text(json.dumps(entries + [{"image_id": "gone.jpg", "disease_class": 1}]))
    elif case == "path escape":
        annotations.write_text(json.dumps([{"image_id": "../../etc/passwd", "disease_class": 1}]))
    elif case == "bad split":
        args[-1] = "test"
    return args


CHALLENGER_CASES = {
    "missing images dir": r"--images .*no-such-dir does not exist",
    "missing annotations": r"--annotations .*no.json does not exist",
    "malformed json": r"annotations.json is not valid JSON",
    "not a list": r"expected a non-empty JSON list",
    "missing key": r"annotations.json entry 3: missing key 'disease_class'",
    "label out of range": r"annotations.json entry 4: label 61 is outside 0..60",
    "label not an integer": r"entry 1: label 'scab' is not an integer",
    "image missing": r"entry 7: image gone.jpg not found",
    "path escape": r"entry 1: image name '../../etc/passwd' must be a relative path",
    "bad split": r"argument --split: invalid choice: 'test'",
}


def _check_failure(done, pattern, out: Path):
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(CHALLENGER_CASES))
def test_aichallenger_bad_input(tmp_path, challenger, case):
    out = tmp_path / "out"
    run = importer if case in ("malformed json", "bad split") else importer_in_process
    done = run(*_bad_challenger(tmp_path, challenger, case), "--out", out)
    _check_failure(done, CHALLENGER_CASES[case], out)


@pytest.mark.parametrize("case, pattern", [
    ("missing root", r"--root .*nowhere does not exist"),
    ("folder not an id", r"folder 'apple' is not a class id"),
    ("label out of range", r"folder '61'.*label 61 is outside 0..60"),
    ("no images", r"holds no images"),
])
def test_folders_bad_input(tmp_path, folders, case, pattern):
    root = folders
    if case == "missing root":
        root = tmp_path / "nowhere"
    elif case == "folder not an id":
        (folders / "apple").mkdir()
    elif case == "label out of range":
        _jpg(folders / "61" / "x.jpg")
    elif case == "no images":
        root = tmp_path / "empty"
        (root / "3").mkdir(parents=True)
    out = tmp_path / "out"
    run = importer if case == "folder not an id" else importer_in_process
    _check_failure(run("folders", "--root", root, "--split", "val", "--out", out), pattern, out)


def test_usage_errors_are_one_line(tmp_path):
    done = importer("folders", "--split", "val", "--out", tmp_path / "o")
    _check_failure(done, r"the following arguments are required: --root", tmp_path / "o")
    done = importer_in_process()
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_importer_flags_are_never_abbreviated(tmp_path):
    from trainable.errors import UserError

    (tmp_path / "tree" / "3").mkdir(parents=True)
    with pytest.raises(UserError, match="required: --root"):  # --roo is not read as --root
        main(["folders", "--roo", str(tmp_path / "tree"), "--split", "val", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
