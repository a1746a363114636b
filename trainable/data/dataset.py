"""The data a trial trains on: the seed layout, checked, decoded once and memory-mapped.

    validate_data(cfg)  fast checks of dirs, CSVs, columns, labels, paths; decodes and writes nothing
    load_data(cfg)      validate, then decode each split once at cache_size(cfg) into the cache
                        ($CROPTUNE_CACHE_DIR or ~/.cache/croptune) and memory-map it

CSV reading and checks live in trainable.data.metadata, the decode-once cache in trainable.data.image_cache.
The trainable does not resolve --demo: callers point the path fields at the demo dataset with
`cfg.replace(**demo_data.layout_paths(demo_data.ensure_demo_dataset()))`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainable.config import TrainConfig, missing_class_weights
from trainable.data.image_cache import (
    CacheJob,
    DecodeError,
    build_caches,
    cache_path,
    cache_root,
    check_cache_root,
    open_cached,
)
from trainable.data.metadata import (
    SplitIndex,
    class_counts,
    compute_class_weights,
    data_warnings,
    read_class_weights,
    read_split,
)
from trainable.errors import UserError

__all__ = ["Split", "DataBundle", "validate_data", "load_data", "cache_size", "cache_root"]


@dataclass
class Split:
    images: np.ndarray      # uint8, N x S x S x 3 (memory-mapped cache), S = cache size
    labels: np.ndarray      # int64 [N], 0..60
    crops: np.ndarray       # int64 [N] (metadata column or taxonomy)
    severities: np.ndarray  # int64 [N] 0 healthy / 1 general / 2 serious
    paths: list[str]        # image paths as written in the metadata (relative to the split dir)

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict:
        # np.memmap pickles its bytes in-band, which would give every process that unpickles a
        # Split (each Tune trial worker, via tune.with_parameters) a private heap copy. A plain
        # ndarray view of the same map pickles them out-of-band (protocol 5): Ray's object store
        # then holds one copy and hands every worker a read-only view of it.
        state = dict(self.__dict__)
        state["images"] = np.asarray(self.images)
        return state


@dataclass
class DataBundle:
    train: Split
    val: Split
    class_counts: np.ndarray   # int64 [61], train counts
    class_weights: np.ndarray  # float32 [61], CSV or computed; mean weight over train samples is 1
    fingerprint: str           # hash of both splits' file lists + sizes + mtimes + cache size + labels
    root: str                  # human description of where it came from


def cache_size(cfg: TrainConfig) -> int:
    """The side of the cached squares: big enough for every image size the schedule uses."""
    return max(cfg.image_size, cfg.progressive_image_size)


def _read_splits(cfg: TrainConfig) -> tuple[SplitIndex, SplitIndex]:
    train = read_split("train", cfg.train_meta, cfg.train_dir, meta_flag="--train-meta", dir_flag="--train-dir")
    val = read_split("val", cfg.val_meta, cfg.val_dir, meta_flag="--val-meta", dir_flag="--val-dir")
    return train, val


_DEFAULT_WEIGHTS = Path(TrainConfig.__dataclass_fields__["class_weights"].default).parts


def _is_default_weights(path: str) -> bool:
    """The seed's data/cleaned/metadata/class_weights.csv, as given or made absolute (search, export)."""
    return Path(path).parts[-len(_DEFAULT_WEIGHTS):] == _DEFAULT_WEIGHTS


def _class_weights(cfg: TrainConfig, counts: np.ndarray) -> tuple[np.ndarray, str]:
    computed = "computed from train counts"
    if not cfg.class_weights:
        return compute_class_weights(counts), computed
    if os.path.exists(cfg.class_weights):
        return read_class_weights(cfg.class_weights, counts), cfg.class_weights
    if _is_default_weights(cfg.class_weights):  # only the seed's default location may be absent
        return compute_class_weights(counts), computed
    raise missing_class_weights(cfg.class_weights)


def _uncached(indexes: list[SplitIndex], size: int) -> list[int]:
    """Which splits have no usable array in the cache (absent, damaged, another shape)."""
    places = [cache_path(ix.files, ix.sizes, ix.mtimes, size, ix.name)[0] for ix in indexes]
    return [i for i, (ix, dest) in enumerate(zip(indexes, places, strict=True))
            if open_cached(dest, len(ix.files), size) is None]


def validate_data(cfg: TrainConfig) -> None:
    """Raise UserError for the first problem in the data the config points at; decode and write nothing."""
    train, val = _read_splits(cfg)
    _class_weights(cfg, class_counts(train.labels))
    if _uncached([train, val], cache_size(cfg)):  # a warm cache may be read-only (a shared, pre-decoded one)
        check_cache_root()


def _describe(cfg: TrainConfig, train: SplitIndex, val: SplitIndex, weights_from: str) -> str:
    dirs = [os.path.abspath(d) for d in (cfg.train_dir, cfg.val_dir)]
    common = os.path.commonpath(dirs)
    where = common if common not in ("", os.sep) else f"{cfg.train_dir} + {cfg.val_dir}"
    return (f"{where} (train {len(train.labels)} images in {train.split_dir}, "
            f"val {len(val.labels)} in {val.split_dir}; class weights {weights_from})")


def _decode_splits(indexes: list[SplitIndex], size: int, workers: int, progress: bool) -> list[np.ndarray]:
    """Each split's images as a read-only memory map; decode the uncached ones together, atomically."""
    places = [cache_path(ix.files, ix.sizes, ix.mtimes, size, ix.name)[0] for ix in indexes]
    missing = _uncached(indexes, size)
    if missing:
        check_cache_root()
    jobs = [CacheJob(indexes[i].files, size, places[i], f"decode {indexes[i].name} @{size}px") for i in missing]
    try:
        build_caches(jobs, workers=workers, progress=progress)
    except OSError as exc:  # passed the check, failed anyway: a full disk, a mount gone read-only
        raise UserError(f"the image cache in {cache_root()} cannot be written ({exc.strerror or exc}); free "
                        f"space there or set CROPTUNE_CACHE_DIR to another folder") from None
    except DecodeError as exc:
        job, path, reason = exc.args
        index = indexes[missing[job]]
        row = index.files.index(path) + 1
        raise UserError(f"{index.csv_path} row {row}: image {index.rel_paths[row - 1]} in {index.split_dir} "
                        f"cannot be decoded ({reason}); replace the file or remove the row") from None
    arrays = [open_cached(dest, len(ix.files), size) for ix, dest in zip(indexes, places, strict=True)]
    if any(array is None for array in arrays):
        raise UserError(f"the image cache in {cache_root()} could not be read back; check the disk "
                        f"or set CROPTUNE_CACHE_DIR to another folder")
    return arrays


def load_data(cfg: TrainConfig, progress: bool = True) -> DataBundle:
    """Validate, then decode both splits once at cache_size(cfg) (cached, atomic) and memory-map them."""
    train_index, val_index = _read_splits(cfg)
    counts = class_counts(train_index.labels)
    weights, weights_from = _class_weights(cfg, counts)
    for line in data_warnings(train_index, val_index):
        print(f"warning: {line}", file=sys.stderr)
    size = cache_size(cfg)
    train_images, val_images = _decode_splits([train_index, val_index], size, cfg.num_workers, progress)
    splits = [Split(images=images, labels=ix.labels, crops=ix.crops, severities=ix.severities,
                    paths=list(ix.rel_paths))
              for images, ix in ((train_images, train_index), (val_images, val_index))]
    digest = hashlib.sha256()
    for ix in (train_index, val_index):
        digest.update(f"{cache_path(ix.files, ix.sizes, ix.mtimes, size, ix.name)[1]}\n".encode())
        digest.update(np.ascontiguousarray(ix.labels, dtype=np.int64).tobytes())
    return DataBundle(train=splits[0], val=splits[1], class_counts=counts, class_weights=weights,
                      fingerprint=digest.hexdigest()[:16],
                      root=_describe(cfg, train_index, val_index, weights_from))

