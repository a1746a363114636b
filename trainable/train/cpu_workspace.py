"""CPU work space for the batched augmentation: a thread pool, per-thread scratch buffers, and
output batches recycled once nothing references them.

Used by trainable.train.augment on the CPU only. The pool runs chunks with one intra-op torch
thread each (from 96 px up: augment._POOL_MIN_SIZE); scratch buffers are per thread; a batch
from output_batch() is reused once no tensor, view or numpy alias of it is alive, so callers
need not release anything. Both save time per batch (bench/README.md, "Numbers behind the
code", `python -m bench.micro_augment`).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from trainable._compat import storage_use_count

_local = threading.local()


def scratch(name: str, numel: int) -> torch.Tensor:
    """A float32 CPU buffer reused per thread: a fresh 0.6 MB one costs page faults."""
    buf = getattr(_local, name, None)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel)
        setattr(_local, name, buf)
    return buf[:numel]


_pool: dict = {}
_pool_lock, _outputs_lock = threading.Lock(), threading.Lock()


def _forget_pool() -> None:  # a forked child has the pool object but not its threads
    global _pool_lock, _outputs_lock
    _pool.clear()
    _pool_lock, _outputs_lock = threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def thread_pool(workers: int) -> ThreadPoolExecutor:
    """A pool of `workers` threads with one intra-op torch thread each (made once per size)."""
    with _pool_lock:
        if _pool.get("workers") != workers:
            if "pool" in _pool:
                _pool["pool"].shutdown(wait=False)
            caller_threads = torch.get_num_threads()
            pool = ThreadPoolExecutor(workers, thread_name_prefix="croptune-augment",
                                      initializer=torch.set_num_threads, initargs=(1,))
            barrier = threading.Barrier(workers)  # start all threads now: all initializers have run
            list(pool.map(lambda _: barrier.wait(), range(workers)))
            # set_num_threads also sets the count for threads torch has not seen yet
            # (e.g. a Tune trainable's thread): give that default back to the caller's count
            torch.set_num_threads(caller_threads)
            _pool.update(workers=workers, pool=pool)
        return _pool["pool"]


_outputs: list[tuple[torch.Tensor, int]] = []  # (buffer, storage use count when only the cache holds it)
_OUTPUTS_KEPT = 4


def _use_count(buffer: torch.Tensor) -> int | None:  # references to its storage, from any tensor
    return storage_use_count(buffer)


def output_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 CPU tensor of `shape`, in memory of an earlier output nobody references now.

    A fresh batch is page-faulted in on first touch, a large share of the augmentation's time.
    The loop holds batch i while it makes batch i + 1: a few buffers cycle.
    One is reused only when its storage has no other user (no tensor, view, saved-for-backward
    or numpy alias of it alive): nothing else can still be reading it."""
    numel = math.prod(shape)
    if storage_use_count(torch.empty(0)) is None:  # a private API: without it, no reuse
        return torch.empty(shape)
    with _outputs_lock:
        free = [i for i, (buffer, alone) in enumerate(_outputs) if _use_count(buffer) == alone]
        for i in free:
            if _outputs[i][0].numel() == numel:
                return _outputs[i][0].view(shape)
        buffer = torch.empty(numel)
        if len(_outputs) < _OUTPUTS_KEPT:
            _outputs.append((buffer, _use_count(buffer)))
        elif free:  # replace a free buffer of another size (progressive resizing, a last batch)
            _outputs[free[0]] = (buffer, _use_count(buffer))
        return buffer.view(shape)
