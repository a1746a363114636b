"""The data layer on the paths a user's defaults take: default decode workers, a warm or damaged
cache, 16-bit images, the default class-weights path, a cache dir that cannot be used, and the
legal-but-suspicious inputs that earn a warning."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import cached_files, make_dataset
from PIL import Image

from trainable.config import TrainConfig
from trainable.data.dataset import load_data, validate_data
from trainable.errors import UserError

DEFAULT_WORKERS = TrainConfig().num_workers



def data_flags(cfg) -> list[str]:
    """The data flags of a config: what a user types for their own folder."""
    return ["--train-dir", cfg.train_dir, "--val-dir", cfg.val_dir, "--train-meta", cfg.train_meta,
            "--val-meta", cfg.val_meta]

def test_default_workers_with_a_warm_cache(tmp_path, croptune_cache):
    # The second run of `python -m trainable` on the same data: every split is cached, nothing to decode.
    assert DEFAULT_WORKERS > 1  # the pool path, as a user's run takes it
    cfg = make_dataset(tmp_path).replace(num_workers=DEFAULT_WORKERS)
    first = load_data(cfg, progress=False)
    arrays = sorted(cached_files(croptune_cache))
    again = load_data(cfg, progress=False)
    assert sorted(cached_files(croptune_cache)) == arrays
    assert again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(again.train.images, first.train.images)
    np.testing.assert_array_equal(again.val.images, first.val.images)


@pytest.mark.parametrize("keep", [0, 10, "half"])
def test_a_damaged_cached_array_is_rebuilt(tmp_path, croptune_cache, keep):
    # Between two runs the cached train array loses its tail (a full disk, a killed copy, a bad sync).
    cfg = make_dataset(tmp_path)
    first = load_data(cfg, progress=False)
    expected = np.array(first.train.images)  # a private copy: the first run's map dies with the file
    del first.train.images
    train_array = next(p for p in cached_files(croptune_cache) if p.name.startswith("train-"))
    whole = train_array.read_bytes()
    train_array.write_bytes(whole[:len(whole) // 2 if keep == "half" else keep])
    again = load_data(cfg, progress=False)
    assert train_array.read_bytes() == whole
    np.testing.assert_array_equal(again.train.images, expected)
    assert again.fingerprint == first.fingerprint
    assert not [p for p in cached_files(croptune_cache) if p.name.endswith(".tmp")]


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    from trainable.data.image_cache import decode_image

    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (64, 1))  # black to white
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    Image.fromarray(np.full((32, 32), 128 * 257, dtype=np.uint16)).save(tmp_path / "mid16.png")
    assert Image.open(tmp_path / "ramp16.png").mode.startswith("I;16")  # what a 16-bit PNG opens as
    mid = decode_image(str(tmp_path / "mid16.png"), 16)
    assert mid.shape == (16, 16, 3) and (mid == 128).all()
    ramp8 = decode_image(str(tmp_path / "ramp16.png"), 64)
    assert (ramp8[..., 0] == ramp8[..., 2]).all()  # grey stays grey
    row = ramp8[32, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all()  # the whole range, in order
    np.testing.assert_allclose(row, np.linspace(0, 255, 64), atol=2)
    assert (ramp8 == 255).mean() < 0.05  # before: 99.6 % clipped to white


# ------------------------------------------------------------------ --class-weights
def test_a_typed_class_weights_path_must_exist(tmp_path, croptune_cache):
    cfg = make_dataset(tmp_path / "d").replace(class_weights=str(tmp_path / "weigths.csv"))  # a typo
    for check in (validate_data, lambda c: load_data(c, progress=False)):
        with pytest.raises(UserError) as caught:
            check(cfg)
        message = str(caught.value)
        assert "\n" not in message
        assert re.match(r"--class-weights .*weigths\.csv does not exist: point it at a label_61,weight CSV", message)
    assert cached_files(croptune_cache) == []


def test_only_the_default_class_weights_path_may_be_absent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/cleaned/metadata/class_weights.csv here
    cfg = make_dataset(tmp_path / "d")
    default = TrainConfig().class_weights
    assert default == "data/cleaned/metadata/class_weights.csv"
    # as typed by default, and as a search (absolute paths) or an exported best.yaml carries it
    for path in (default, str(Path(default).resolve()), "/elsewhere/" + default):
        data = load_data(cfg.replace(class_weights=path), progress=False)
        assert data.class_weights[60] / data.class_weights[0] == pytest.approx(3.0)  # computed: 3 vs 1 images
        assert "computed from train counts" in data.root


def test_train_cli_names_a_missing_class_weights_file(tmp_path, cli_in_process):
    from trainable.cli import main

    cfg = make_dataset(tmp_path / "d")
    save = tmp_path / "run"
    argv = [*data_flags(cfg), "--class-weights", str(tmp_path / "nope.csv"), "--backbone", "test_resnet",
            "--no-pretrained", "--epochs", "1", "--image-size", "16", "--progressive-image-size", "16",
            "--save-dir", str(save)]
    code, out, err = cli_in_process(main, argv)
    assert code == 2
    assert err.strip().splitlines() == [f"error: --class-weights {tmp_path / 'nope.csv'} does not exist: point it at "
                                        f"a label_61,weight CSV, or leave the flag out (or pass --class-weights '') "
                                        f"to compute weights from the train counts"]
    assert not save.exists()


# ------------------------------------------------------------------ legal but suspicious: warnings
def _warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]


def test_clean_data_loads_without_warnings(tmp_path, capsys):
    load_data(make_dataset(tmp_path), progress=False)
    assert capsys.readouterr().err == ""


def test_val_class_never_in_training_is_one_warning(tmp_path, capsys):
    cfg = make_dataset(tmp_path, train_labels=(0, 0, 5), val_labels=(0, 5, 17, 17, 60))
    data = load_data(cfg, progress=False)
    assert len(data.val) == 5  # legal: it still runs
    assert _warnings(capsys) == [f"warning: {cfg.val_meta}: classes 17, 60 (3 val image(s)) never occur in "
                                 f"{cfg.train_meta}; the model cannot learn them, and they count as errors in val "
                                 f"accuracy: add training images of them or drop them from validation"]


def test_duplicated_metadata_rows_are_one_warning_per_split(tmp_path, capsys):
    cfg = make_dataset(tmp_path)
    meta = Path(cfg.train_meta)
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join([*lines, lines[2], lines[2], lines[4]]) + "\n")  # rows 7, 8 repeat 2; 9 repeats 4
    data = load_data(cfg, progress=False)
    assert len(data.train) == 9
    assert _warnings(capsys) == [f"warning: {cfg.train_meta}: 3 row(s) repeat an image listed earlier (first: row 7 "
                                 f"repeats row 2, img_1.png); each copy counts as another sample: remove the "
                                 f"repeats unless you mean to oversample"]


@pytest.mark.parametrize("how", ["same file", "a copy"])
def test_val_csv_identical_to_train_csv_is_one_warning(tmp_path, capsys, how):
    cfg = make_dataset(tmp_path)
    if how == "same file":
        cfg = cfg.replace(val_meta=cfg.train_meta, val_dir=cfg.train_dir)
    else:
        Path(cfg.val_meta).write_bytes(Path(cfg.train_meta).read_bytes())
        cfg = cfg.replace(val_dir=cfg.train_dir)
    load_data(cfg, progress=False)
    what = "is identical to" if how == "same file" else "lists the same images and labels as"
    assert _warnings(capsys) == [f"warning: --val-meta {cfg.val_meta} {what} --train-meta {cfg.train_meta}: "
                                 f"validation then measures memorisation, not generalisation; give a held-out "
                                 f"validation split"]


def test_val_listing_the_train_images_is_one_warning(tmp_path, capsys):
    cfg = make_dataset(tmp_path)
    # another CSV (paths written differently) over the same image files and labels
    rows = Path(cfg.train_meta).read_text().splitlines()[1:]
    cfg = cfg.replace(val_dir=str(tmp_path))
    Path(cfg.val_meta).write_text("image,label_61\n" + "".join(f"train/{r}\n" for r in rows))
    load_data(cfg, progress=False)
    assert _warnings(capsys) == [f"warning: --val-meta {cfg.val_meta} lists the same images and labels as "
                                 f"--train-meta {cfg.train_meta}: validation then measures memorisation, not "
                                 f"generalisation; give a held-out validation split"]


# ------------------------------------------------------------------ CROPTUNE_CACHE_DIR that cannot be used
def _cache_is_a_file(tmp_path, monkeypatch) -> Path:
    bad = tmp_path / "cache-file"
    bad.write_text("not a folder")
    monkeypatch.setenv("CROPTUNE_CACHE_DIR", str(bad))
    return bad


@pytest.mark.parametrize("under", [False, True])
def test_cache_dir_that_is_a_file_is_one_line(tmp_path, monkeypatch, under):
    bad = _cache_is_a_file(tmp_path, monkeypatch)
    if under:  # a folder to be created below a file
        monkeypatch.setenv("CROPTUNE_CACHE_DIR", str(bad / "sub"))
    cfg = make_dataset(tmp_path / "d")
    for check in (validate_data, lambda c: load_data(c, progress=False)):
        with pytest.raises(UserError) as caught:
            check(cfg)
        assert str(caught.value) == (f"CROPTUNE_CACHE_DIR={os.environ['CROPTUNE_CACHE_DIR']}: {bad} is not a "
                                     f"directory; set CROPTUNE_CACHE_DIR to a writable folder (or unset it to use "
                                     f"~/.cache/croptune)")
    assert bad.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only (mode 555) folder")
def test_read_only_cache_dir_is_one_line_unless_already_warm(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("CROPTUNE_CACHE_DIR", str(cache))
    cfg = make_dataset(tmp_path / "d")
    cache.chmod(0o555)
    try:
        with pytest.raises(UserError, match=rf"^CROPTUNE_CACHE_DIR={cache}: {cache} is not writable; set "):
            validate_data(cfg)
        with pytest.raises(UserError, match=r"is not writable"):
            load_data(cfg, progress=False)
        assert list(cache.iterdir()) == []
        cache.chmod(0o755)
        load_data(cfg, progress=False)  # decoded once while writable...
        for folder in (cache / "images", cache):
            folder.chmod(0o555)
        validate_data(cfg)  # ...then read from a read-only (shared, pre-decoded) cache
        assert len(load_data(cfg, progress=False).train) == 6
    finally:
        for folder in (cache, cache / "images"):
            if folder.exists():
                folder.chmod(0o755)


def test_train_cli_with_an_unusable_cache_dir_writes_nothing(tmp_path, monkeypatch, cli_in_process):
    from trainable.cli import main

    cfg = make_dataset(tmp_path / "d")
    bad = _cache_is_a_file(tmp_path, monkeypatch)
    save = tmp_path / "run"
    tiny = ["--backbone", "test_resnet", "--no-pretrained", "--epochs", "1", "--image-size", "16",
            "--progressive-image-size", "16", "--save-dir", str(save)]
    for argv in (data_flags(cfg) + tiny, ["--demo", *tiny]):  # the demo data is generated into the cache too
        code, out, err = cli_in_process(main, argv)
        assert code == 2
        assert err.strip().splitlines() == [f"error: CROPTUNE_CACHE_DIR={bad}: {bad} is not a directory; set "
                                            f"CROPTUNE_CACHE_DIR to a writable folder (or unset it to use "
                                            f"~/.cache/croptune)"]
        assert not save.exists()


def test_search_with_an_unusable_cache_dir_stops_before_ray(tmp_path, monkeypatch, bad_search):
    cfg = make_dataset(tmp_path / "d")
    bad = _cache_is_a_file(tmp_path, monkeypatch)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    argv = [*data_flags(cfg), "--backbone", "test_resnet", "--no-pretrained", "--epochs", "2",
            "--image-size", "16", "--progressive-image-size", "16", "--space", "stage_epochs",
            "--storage-path", str(cwd / "results")]
    code, out, err = bad_search(argv, cwd)
    assert code == 2, (out, err)
    assert err.strip().splitlines() == [f"error: CROPTUNE_CACHE_DIR={bad}: {bad} is not a directory; set "
                                        f"CROPTUNE_CACHE_DIR to a writable folder (or unset it to use "
                                        f"~/.cache/croptune)"]
    assert list(cwd.iterdir()) == []  # no storage path, no mlflow.db


def test_a_typed_class_weights_path_with_the_default_ending_must_exist_too(tmp_path, cli_in_process):
    from trainable.cli import main

    cfg = make_dataset(tmp_path / "d")
    typed = tmp_path / "elsewhere" / "data" / "cleaned" / "metadata" / "class_weights.csv"  # a wrong root
    flags = [*data_flags(cfg), "--class-weights", str(typed), "--save-dir", str(tmp_path / "run")]
    code, _, err = cli_in_process(main, flags)
    assert code == 2 and err.startswith(f"error: --class-weights {typed} does not exist"), err
    assert not (tmp_path / "run").exists()
