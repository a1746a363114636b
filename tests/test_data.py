"""Data layer: metadata CSVs, class weights, decode-once cache, and every bad-input case."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import SIZE, cached_files, make_dataset, write_png
from PIL import Image

from trainable.config import TrainConfig
from trainable.data import image_cache
from trainable.data.dataset import cache_size, load_data, validate_data
from trainable.errors import UserError


def with_weights(cfg: TrainConfig, text: str) -> TrainConfig:
    """Write a class-weights CSV beside the train metadata and point the config at it."""
    path = Path(cfg.train_meta).parent / "class_weights.csv"
    path.write_text(text)
    return cfg.replace(class_weights=str(path))


def snapshot(*folders: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for folder in folders if folder.exists()
            for p in sorted(folder.rglob("*"))}


def test_load_basic(tmp_path, croptune_cache):
    cfg = make_dataset(tmp_path)
    validate_data(cfg)
    assert cached_files(croptune_cache) == []  # validation writes nothing
    data = load_data(cfg, progress=False)
    assert isinstance(data.train.images, np.memmap)
    assert data.train.images.shape == (6, SIZE, SIZE, 3) and data.train.images.dtype == np.uint8
    assert data.val.images.shape == (3, SIZE, SIZE, 3)
    np.testing.assert_array_equal(data.train.labels, [0, 0, 0, 5, 5, 60])
    assert data.train.labels.dtype == np.int64
    np.testing.assert_array_equal(data.train.crops, [0, 0, 0, 0, 0, 9])      # from the taxonomy
    np.testing.assert_array_equal(data.train.severities, [0, 0, 0, 2, 2, 1])
    assert data.train.paths[0] == "img_0.png"
    assert tuple(data.train.images[3, 0, 0]) == (20, 30, 100)                # solid colour decoded
    assert data.class_counts.shape == (61,) and data.class_counts[[0, 5, 60]].tolist() == [3, 2, 1]
    # computed inverse-frequency weights, mean 1 over the training samples
    weights = data.class_weights
    assert weights.dtype == np.float32 and weights.shape == (61,)
    assert weights[data.train.labels].mean() == pytest.approx(1.0)
    assert weights[60] / weights[0] == pytest.approx(3.0)
    assert re.fullmatch(r"[0-9a-f]{16}", data.fingerprint)
    assert str(tmp_path) in data.root
    assert cache_size(cfg.replace(image_size=64, progressive_image_size=96)) == 96


@pytest.mark.parametrize("column", ["image_id", "filename", "file", "path", "Image"])
def test_image_column_aliases(tmp_path, column):
    cfg = make_dataset(tmp_path, header=f"{column},label_61")
    assert len(load_data(cfg, progress=False).train) == 6


def test_bom_blank_lines_and_float_labels(tmp_path):
    cfg = make_dataset(tmp_path)
    meta = Path(cfg.train_meta)
    meta.write_text("\ufeffimage,label_61\nimg_0.png,5.0\n\nimg_1.png,0\n", encoding="utf-8")
    assert load_data(cfg, progress=False).train.labels.tolist() == [5, 0]


def test_crop_and_severity_columns(tmp_path):
    values = {0: "Tomato,serious", 5: "3,healthy", 60: ",2"}  # names, ids, and an empty cell
    cfg = make_dataset(tmp_path, header="image,label_61,crop,severity", extra=values.get)
    data = load_data(cfg, progress=False)
    np.testing.assert_array_equal(data.train.crops, [9, 9, 9, 3, 3, 9])
    np.testing.assert_array_equal(data.train.severities, [2, 2, 2, 0, 0, 2])


def test_class_weights_csv(tmp_path):
    cfg = make_dataset(tmp_path)
    rows = "\n".join(f"{label},{2.0 if label == 60 else 1.0}" for label in range(61))
    data = load_data(with_weights(cfg, "label_61,weight\n" + rows + "\n"), progress=False)
    assert data.class_weights[60] / data.class_weights[0] == pytest.approx(2.0)
    assert data.class_weights[data.train.labels].mean() == pytest.approx(1.0)


def test_decode_resizes_shorter_side_then_centre_crops(tmp_path):
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    image[:, :10] = (255, 0, 0)
    image[:, 10:30] = (0, 255, 0)
    image[:, 30:] = (0, 0, 255)
    Image.fromarray(image).save(tmp_path / "wide.png")
    Image.new("LA", (30, 30), (128, 200)).save(tmp_path / "grey.png")
    out = image_cache.decode_image(str(tmp_path / "wide.png"), 16)
    assert out.shape == (16, 16, 3)
    assert (out[:, 2:-2] == (0, 255, 0)).all()  # the side bands are cropped away
    grey = image_cache.decode_image(str(tmp_path / "grey.png"), 16)
    assert grey.shape == (16, 16, 3) and (grey == 128).all()


def test_cache_is_reused_memory_mapped_and_keyed(tmp_path, croptune_cache, monkeypatch):
    cfg = make_dataset(tmp_path)
    first = load_data(cfg, progress=False)
    arrays = sorted(p.name for p in cached_files(croptune_cache))
    assert len(arrays) == 2 and all(name.endswith(".npy") for name in arrays)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(image_cache, "decode_image", no_decoding)
    again = load_data(cfg, progress=False)
    assert isinstance(again.train.images, np.memmap) and not again.train.images.flags.writeable
    assert again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(again.train.images, first.train.images)
    monkeypatch.undo()
    monkeypatch.setenv("CROPTUNE_CACHE_DIR", str(croptune_cache))

    # changing one image's content (size and mtime) gives a new key and the new pixels
    write_png(tmp_path / "train" / "img_3.png", (1, 2, 3), size=(30, 30))
    os.utime(tmp_path / "train" / "img_3.png", ns=(1, 1))
    changed = load_data(cfg, progress=False)
    assert changed.fingerprint != first.fingerprint
    assert tuple(changed.train.images[3, 0, 0]) == (1, 2, 3)
    assert len(cached_files(croptune_cache)) == 3  # a new train array; val reused
    # another cache size is another array
    load_data(cfg.replace(progressive_image_size=SIZE + 4), progress=False)
    assert len(cached_files(croptune_cache)) == 5


def test_parallel_decode_matches_in_process(tmp_path, croptune_cache, monkeypatch):
    labels = tuple(range(61)) + tuple(range(20))  # 81 images: three chunks
    cfg = make_dataset(tmp_path, train_labels=labels)
    serial = load_data(cfg, progress=False)
    monkeypatch.setenv("CROPTUNE_CACHE_DIR", str(tmp_path / "other-cache"))
    parallel = load_data(cfg.replace(num_workers=2), progress=False)
    np.testing.assert_array_equal(serial.train.images, parallel.train.images)


# ------------------------------------------------------------------ bad input
def _edit_csv(cfg, text):
    Path(cfg.train_meta).write_text(text)


def _set_row(cfg, row, value):
    lines = Path(cfg.train_meta).read_text().splitlines()
    lines[row] = value
    Path(cfg.train_meta).write_text("\n".join(lines) + "\n")


BAD_CASES = {
    "missing train dir": (lambda cfg: cfg.replace(train_dir=cfg.train_dir + "-nope"),
                          r"--train-dir .*train-nope does not exist"),
    "missing val meta": (lambda cfg: cfg.replace(val_meta=cfg.val_meta + ".gone"),
                         r"--val-meta .*val_metadata.csv.gone does not exist"),
    "missing label column": (lambda cfg: _edit_csv(cfg, "image,label\nimg_0.png,0\n"),
                             r"train_metadata.csv: no label_61 column"),
    "missing image column": (lambda cfg: _edit_csv(cfg, "picture,label_61\nimg_0.png,0\n"),
                             r"train_metadata.csv: no image path column \(expected one of image, image_id"),
    "label out of range": (lambda cfg: _set_row(cfg, 5, "img_4.png,75"),
                           r"train_metadata.csv row 5 \(line 6\): label 75 is outside 0..60"),
    "label not an integer": (lambda cfg: _set_row(cfg, 2, "img_1.png,apple"),
                             r"train_metadata.csv row 2 \(line 3\): label 'apple' is not an integer"),
    "label fractional": (lambda cfg: _set_row(cfg, 2, "img_1.png,2.5"),
                         r"row 2 \(line 3\): label '2.5' is not an integer"),
    "relative escape": (lambda cfg: _set_row(cfg, 3, "../../etc/passwd,0"),
                        r"row 3 \(line 4\): image path '../../etc/passwd' points outside"),
    "absolute path": (lambda cfg: _set_row(cfg, 1, "/etc/passwd,0"),
                      r"row 1 \(line 2\): image path '/etc/passwd' points outside"),
    "sibling escape": (lambda cfg: _set_row(cfg, 1, "../val/img_0.png,0"),
                       r"row 1 \(line 2\): image path '../val/img_0.png' points outside"),
    "missing image": (lambda cfg: _set_row(cfg, 4, "nope.png,5"),
                      r"train_metadata.csv row 4 \(line 5\): image nope.png not found"),
    "empty split": (lambda cfg: _edit_csv(cfg, "image,label_61\n"),
                    r"train_metadata.csv lists no images: the train split is empty"),
    "empty file": (lambda cfg: _edit_csv(cfg, ""), r"train_metadata.csv is empty"),
    "bad crop": (lambda cfg: _edit_csv(cfg, "image,label_61,crop\nimg_0.png,0,banana\n"),
                 r"row 1 \(line 2\): crop 'banana' is not one of apple"),
    "bad weights column": (lambda cfg: with_weights(cfg, "class,weight\n0,1\n"),
                           r"class_weights.csv: no label_61 column"),
    "negative weight": (lambda cfg: with_weights(cfg,
        "label_61,weight\n" + "".join(f"{c},1\n" for c in range(60)) + "60,-1\n"),
        r"class_weights.csv row 61 \(line 62\): weight '-1' is not a finite number >= 0"),
    "weights miss a class": (lambda cfg: with_weights(cfg, "label_61,weight\n0,1\n5,1\n"),
                             r"class_weights.csv has no weight for class 60, which has 1 training images"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_one_line_naming_the_place(tmp_path, croptune_cache, case):
    data_root = tmp_path / "data"
    cfg = make_dataset(data_root)
    mutate, pattern = BAD_CASES[case]
    changed = mutate(cfg)
    cfg = changed if isinstance(changed, TrainConfig) else cfg
    before = snapshot(data_root, croptune_cache)
    for check in (validate_data, lambda c: load_data(c, progress=False)):
        with pytest.raises(UserError) as caught:
            check(cfg)
        message = str(caught.value)
        assert "\n" not in message
        assert re.search(pattern, message), message
    assert snapshot(data_root, croptune_cache) == before
    assert cached_files(croptune_cache) == []


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_names_the_file_and_caches_nothing(tmp_path, croptune_cache, workers):
    cfg = make_dataset(tmp_path, train_labels=tuple(range(40)))
    (tmp_path / "train" / "img_37.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    validate_data(cfg)  # no decoding: the corrupt file is found by load_data
    with pytest.raises(UserError, match=r"train_metadata.csv row 38: image img_37.png in .*train cannot be "
                                        r"decoded \(UnidentifiedImageError"):
        load_data(cfg.replace(num_workers=workers), progress=False)
    assert cached_files(croptune_cache) == []


def test_truncated_image_is_reported(tmp_path, croptune_cache):
    cfg = make_dataset(tmp_path)
    path = tmp_path / "val" / "img_1.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(UserError, match=r"val_metadata.csv row 2: image img_1.png .* cannot be decoded"):
        load_data(cfg, progress=False)
    assert cached_files(croptune_cache) == []
