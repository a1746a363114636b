"""The data layer on the paths a user's defaults take: default decode workers, a warm or damaged
cache, 16-bit images, the default class-weights path, a cache dir that cannot be used, and the
legal-but-suspicious inputs that earn a warning."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_data import cached_files, config_for, make_dataset
from trainable.config import TrainConfig
from trainable.data import load_data

DEFAULT_WORKERS = TrainConfig().num_workers


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
    from trainable.image_cache import decode_image

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
