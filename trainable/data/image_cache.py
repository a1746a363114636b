"""Decode once: every image of a split becomes one uint8 N x S x S x 3 .npy in the cache dir.

The file name carries a key hashing the file list, sizes, mtimes and S, so a changed, added or
removed image (or another cache size) gives a new file. The array is written to a temporary file
while decoding and renamed into place only after every image decoded; later runs (and every
trial of a search on the same node) memory-map it read-only.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Bump when decode_image changes what it produces: old caches then stop matching.
DECODE_VERSION = "fit-bicubic-v2"
_CHUNK = 32  # images per worker task


def cache_root() -> Path:
    """$CROPTUNE_CACHE_DIR, or ~/.cache/croptune."""
    env = os.environ.get("CROPTUNE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "croptune"


def cache_problem() -> str | None:
    """Why the cache root (or its images/ folder) cannot be created and written there, or None.

    The message names CROPTUNE_CACHE_DIR and the fix; nothing is created by checking.
    """
    root = cache_root()
    for folder in (root, root / "images"):
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            problem = f"{probe} is not a directory"
        elif not os.access(probe, os.W_OK | os.X_OK):  # EROFS too (a read-only mount), even for root
            problem = f"{probe} is not writable"
        else:
            continue
        env = os.environ.get("CROPTUNE_CACHE_DIR")
        where = f"CROPTUNE_CACHE_DIR={env}" if env else f"the image cache {root}"
        return (f"{where}: {problem}; set CROPTUNE_CACHE_DIR to a writable folder"
                + (" (or unset it to use ~/.cache/croptune)" if env else ""))
    return None


def check_cache_root() -> None:
    """Raise UserError (one line naming CROPTUNE_CACHE_DIR) unless the cache can be written."""
    from trainable.errors import UserError

    problem = cache_problem()
    if problem:
        raise UserError(problem)


def cache_key(files: Sequence[str], sizes: Sequence[int], mtimes: Sequence[int], size: int) -> str:
    digest = hashlib.sha256(f"{DECODE_VERSION}\n{size}\n".encode())
    for file, nbytes, mtime in zip(files, sizes, mtimes, strict=True):
        digest.update(f"{file}\0{nbytes}\0{mtime}\n".encode())
    return digest.hexdigest()[:24]


_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # PIL's 16/32-bit integer greyscale


def _eight_bit_grey(image: Image.Image) -> Image.Image:
    """Greyscale wider than 8 bits as mode L, scaled (65535 -> 255); PIL's convert clips at 255 instead.

    A 32-bit integer image ("I") is scaled as 16-bit when its values fit 16 bits (PNG, most TIFFs),
    else by its own maximum.
    """
    values = np.asarray(image, dtype=np.float64)
    top = values.max(initial=0.0)
    full_scale = 65535.0 if top <= 65535 else top
    scaled = np.rint(np.clip(values, 0.0, None) * (255.0 / full_scale))
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def decode_image(path: str, size: int) -> np.ndarray:
    """RGB uint8 [size, size, 3]: shorter side resized to size, then a centred square crop."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))  # JPEG: let libjpeg downscale while decoding
        image = ImageOps.exif_transpose(image)
        if image.mode in _WIDE_GREY_MODES:
            image = _eight_bit_grey(image)
        image = image.convert("RGB")
        fitted = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(fitted, dtype=np.uint8)


def _decode_chunk(task: tuple[int, int, list[str], int]) -> tuple[int, int, np.ndarray | None, str | None]:
    """Worker: decode a run of images; on the first failure return "path\0reason" instead."""
    job, start, paths, size = task
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            out[i] = decode_image(path, size)
        except Exception as exc:  # PIL raises many kinds for corrupt files
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return job, start, None, f"{path}\0{reason}"
    return job, start, out, None


def _results(tasks: list, workers: int) -> Iterator[tuple[int, int, np.ndarray | None, str | None]]:
    if workers <= 0 or len(tasks) <= 1:  # nothing or one chunk to decode (a warm cache): no pool
        yield from map(_decode_chunk, tasks)
        return
    # forkserver/spawn: never fork a process that may hold threads (Ray, torch).
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with context.Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap_unordered(_decode_chunk, tasks)


class DecodeError(Exception):
    """An image could not be decoded: args are (job index, path, reason)."""


@dataclass
class CacheJob:
    files: Sequence[str]
    size: int
    dest: Path
    label: str = "decode"


def build_caches(jobs: Sequence[CacheJob], *, workers: int, progress: bool) -> None:
    """Decode every job's files into its dest .npy; rename them into place only when all decoded.

    On a failure (DecodeError) every temporary file is removed: the cache is left as it was.
    """
    if not jobs:
        return
    temps: list[Path] = []
    bar = None
    try:
        arrays = []
        for job in jobs:
            job.dest.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp_name = tempfile.mkstemp(prefix=f".{job.dest.stem}.", suffix=".tmp", dir=job.dest.parent)
            os.close(handle)
            temps.append(Path(tmp_name))
            os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the cache is readable like any other file
            arrays.append(np.lib.format.open_memmap(tmp_name, mode="w+", dtype=np.uint8,
                                                    shape=(len(job.files), job.size, job.size, 3)))
        tasks = [(index, start, list(job.files[start:start + _CHUNK]), job.size)
                 for index, job in enumerate(jobs) for start in range(0, len(job.files), _CHUNK)]
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            labels = ", ".join(job.label for job in jobs)
            bar = tqdm(total=sum(len(job.files) for job in jobs), desc=labels, unit="img", leave=False)
        for index, start, chunk, failure in _results(tasks, workers):
            if failure is not None:
                path, reason = failure.split("\0", 1)
                raise DecodeError(index, path, reason)
            arrays[index][start:start + len(chunk)] = chunk
            if bar is not None:
                bar.update(len(chunk))
        for array in arrays:
            array.flush()
        del arrays
        for tmp, job in zip(temps, jobs, strict=True):
            os.replace(tmp, job.dest)
    finally:
        if bar is not None:
            bar.close()
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def cache_path(files: Sequence[str], sizes: Sequence[int], mtimes: Sequence[int], size: int,
               split: str) -> tuple[Path, str]:
    """Where a split's array lives in the cache, and its key."""
    key = cache_key(files, sizes, mtimes, size)
    return cache_root() / "images" / f"{split}-{size}px-{key}.npy", key


def open_cached(dest: Path, count: int, size: int) -> np.ndarray | None:
    """The cached array as a read-only memory map, or None when it is absent or does not fit."""
    if not dest.exists():
        return None
    try:
        array = np.load(dest, mmap_mode="r")
    except (OSError, ValueError, EOFError):  # EOFError: an emptied file
        return None  # unreadable (truncated, emptied, a foreign file): decode again and replace it
    if array.shape == (count, size, size, 3) and array.dtype == np.uint8:
        return array
    return None
