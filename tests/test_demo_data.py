"""The synthetic long-tailed leaf dataset: deterministic, long-tailed, in the seed layout."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainable.config import TrainConfig
from trainable.data import taxonomy
from trainable.data.dataset import load_data
from trainable.data.demo import dataset as demo_data
from trainable.errors import UserError

TINY = {"max_per_class": 3, "min_per_class": 1, "val_per_class": 1, "image_size": 24}


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    first = files_of(demo_data.write_synthetic_dataset(tmp_path / "a", seed=3, **TINY))
    second = files_of(demo_data.write_synthetic_dataset(tmp_path / "b", seed=3, **TINY))
    other = files_of(demo_data.write_synthetic_dataset(tmp_path / "c", seed=4, **TINY))
    assert first == second
    # another seed draws other class counts (other files) and other pixels (every shared image differs)
    assert first.keys() != other.keys()
    shared = [name for name in first.keys() & other.keys() if name.endswith(".png")]
    assert len(shared) > 100 and all(first[name] != other[name] for name in shared)


def test_default_counts_are_long_tailed():
    counts = demo_data.train_counts(0, demo_data.DEFAULTS["max_per_class"], demo_data.DEFAULTS["min_per_class"])
    assert counts.shape == (61,) and counts.min() >= 1
    assert counts.max() / counts.min() >= 20
    assert 4000 <= counts.sum() <= 6000
    # the tail is a seeded shuffle of the classes, not the id order
    assert not np.all(np.diff(counts) <= 0)
    assert not np.array_equal(counts, demo_data.train_counts(1, 250, 12))
    np.testing.assert_array_equal(counts, demo_data.train_counts(0, 250, 12))


def test_default_val_follows_the_train_distribution():
    counts = demo_data.train_counts(0, demo_data.DEFAULTS["max_per_class"], demo_data.DEFAULTS["min_per_class"])
    val = demo_data.val_counts_for(counts, None, 0.2)
    assert val.min() >= demo_data.VAL_MIN
    np.testing.assert_array_equal(val, np.maximum(demo_data.VAL_MIN, np.round(counts * 0.2)))
    assert np.corrcoef(counts, val)[0, 1] > 0.99  # head classes have more val images, as in AI Challenger
    np.testing.assert_array_equal(demo_data.val_counts_for(counts, 3, 0.2), np.full(61, 3))


def test_proportional_val_is_written(tmp_path):
    root = demo_data.write_synthetic_dataset(tmp_path / "p", seed=0, max_per_class=20, min_per_class=1,
                                             val_fraction=0.5, image_size=20)
    with open(demo_data.layout_paths(root)["val_meta"], newline="") as handle:
        labels = [int(r["label_61"]) for r in csv.DictReader(handle)]
    expected = demo_data.val_counts_for(demo_data.train_counts(0, 20, 1), None, 0.5)
    np.testing.assert_array_equal(np.bincount(labels, minlength=61), expected)


def test_layout_loads_with_load_data(tmp_path):
    root = demo_data.write_synthetic_dataset(tmp_path / "demo", seed=0, **TINY)
    paths = demo_data.layout_paths(root)
    assert set(paths) == {"train_dir", "val_dir", "train_meta", "val_meta", "class_weights"}
    with open(paths["train_meta"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image", "label_61", "crop", "disease", "severity"]
    for row in rows:
        info = taxonomy.CLASSES[int(row["label_61"])]
        assert (row["crop"], row["disease"], row["severity"]) == (info.crop, info.disease, info.severity)
    cfg = TrainConfig(image_size=24, progressive_image_size=24, num_workers=0, **paths)
    data = load_data(cfg, progress=False)
    expected = demo_data.train_counts(0, TINY["max_per_class"], TINY["min_per_class"])
    np.testing.assert_array_equal(data.class_counts, expected)
    assert sorted(set(data.val.labels.tolist())) == list(range(61))
    np.testing.assert_array_equal(data.train.crops, taxonomy.crop_targets(data.train.labels))
    assert data.train.images.shape[1:] == (24, 24, 3)
    assert data.train.images.std() > 20  # real pictures, not blank tiles
    weights = np.array([float(r["weight"]) for r in csv.DictReader(open(paths["class_weights"]))])
    np.testing.assert_allclose(weights, data.class_weights, rtol=1e-4)


def test_images_are_png_of_the_requested_size(tmp_path):
    root = demo_data.write_synthetic_dataset(tmp_path, seed=0, max_per_class=1, min_per_class=1,
                                             val_per_class=1, image_size=20)
    with Image.open(root / "train" / "05_0000.png") as image:
        assert image.format == "PNG" and image.size == (20, 20) and image.mode == "RGB"


@pytest.mark.parametrize("bad", [{"min_per_class": 0}, {"min_per_class": 5, "max_per_class": 4},
                                 {"val_per_class": 0}, {"val_per_class": None, "val_fraction": 0.0},
                                 {"image_size": 8}])
def test_bad_sizes_are_user_errors(tmp_path, bad):
    with pytest.raises(UserError):
        demo_data.write_synthetic_dataset(tmp_path / "x", seed=0, **{**TINY, **bad})
    assert not (tmp_path / "x").exists()


def test_ensure_generates_once_and_reuses(croptune_cache, monkeypatch, capsys):
    monkeypatch.setattr(demo_data, "DEFAULTS", TINY)
    path = demo_data.ensure_demo_dataset(seed=1)
    assert path == croptune_cache / f"demo-{demo_data.DEMO_VERSION}-seed1"
    assert str(path) in capsys.readouterr().out
    before = files_of(path)
    stamp = (path / "metadata" / "train_metadata.csv").stat().st_mtime_ns

    def no_generation(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(demo_data, "write_synthetic_dataset", no_generation)
    assert demo_data.ensure_demo_dataset(seed=1) == path
    assert str(path) in capsys.readouterr().out
    assert files_of(path) == before
    assert (path / "metadata" / "train_metadata.csv").stat().st_mtime_ns == stamp
    assert [p.name for p in croptune_cache.iterdir()] == [f"demo-{demo_data.DEMO_VERSION}-seed1"]  # no temp dirs left


def test_interrupted_generation_is_never_reused(croptune_cache, monkeypatch):
    monkeypatch.setattr(demo_data, "DEFAULTS", TINY)
    real = demo_data.write_synthetic_dataset

    def interrupted(root, **kwargs):
        (Path(root) / "train").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_data, "write_synthetic_dataset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo_data.ensure_demo_dataset(seed=2)
    assert list(croptune_cache.iterdir()) == []
    monkeypatch.setattr(demo_data, "write_synthetic_dataset", real)
    path = demo_data.ensure_demo_dataset(seed=2)
    assert (path / "metadata" / "class_weights.csv").is_file()


def test_worker_processes_write_the_same_bytes(tmp_path, monkeypatch):
    serial = files_of(demo_data.write_synthetic_dataset(tmp_path / "serial", seed=5, **TINY))
    monkeypatch.setattr(demo_data, "POOL_MIN_IMAGES", 0)
    monkeypatch.setattr(demo_data.os, "cpu_count", lambda: 2)
    assert files_of(demo_data.write_synthetic_dataset(tmp_path / "pool", seed=5, **TINY)) == serial
