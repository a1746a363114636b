"""`python -m bench.micro_augment`: where train_augment's CPU time goes, step by step.

Times trainable.train.augment.train_augment and its steps on one uint8 batch (the demo's 72 -> 64
px and the seed's 256 -> 224 px), with 1 torch thread and with all of them, next to the
previous implementation (one affine_grid/grid_sample over the float batch + colour jitter as
whole-batch broadcasts; kept below as `grid_sample_augment`). The variants run interleaved,
`--rounds` times, and each row is the median (the machine is shared: compare rows of one run,
not numbers across runs). "cpu" is this thread's CPU time: with the thread pool it leaves out
the pool's work, so read "wall" for the whole call.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np


def grid_sample_augment(images, out_size: int, generator):
    """The implementation train_augment replaced (full branch), for the comparison."""
    import torch
    import torch.nn.functional as F

    from trainable.train.augment import _LUMA, CROP_RATIO, FULL_SCALE, IMAGENET_MEAN, IMAGENET_STD, JITTER

    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    n = x.shape[0]
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64)
    area = FULL_SCALE[0] + (FULL_SCALE[1] - FULL_SCALE[0]) * u[:, 0]
    lo, hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.exp(lo + (hi - lo) * u[:, 1])
    width, height = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = width * torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta[:, 0, 2] = (1.0 - width) * (2.0 * u[:, 2] - 1.0)
    theta[:, 1, 1] = height * torch.where(u[:, 5] < 0.5, -1.0, 1.0)
    theta[:, 1, 2] = (1.0 - height) * (2.0 * u[:, 3] - 1.0)
    grid = F.affine_grid(theta.float(), [n, 3, out_size, out_size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    factors = 1.0 - JITTER + 2.0 * JITTER * torch.rand(n, 3, generator=generator)
    b, c, s = (factors[:, i].view(n, 1, 1, 1) for i in range(3))
    luma = torch.tensor(_LUMA).view(1, 3, 1, 1)
    x = (x * b).clamp_(0.0, 1.0)
    mean_grey = (x * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean_grey) * c + mean_grey).clamp_(0.0, 1.0)
    grey = (x * luma).sum(dim=1, keepdim=True)
    x = ((x - grey) * s + grey).clamp_(0.0, 1.0)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def roi_align_resize(images, boxes, out_size: int):
    """The batch's crops resized in one torchvision.ops.roi_align call (bilinear, one sample per
    output pixel: no antialiasing), from a float copy of the batch: a candidate batched path."""
    import torch
    from torchvision.ops import roi_align

    b = boxes.float()
    rois = torch.cat([torch.arange(len(b)).float()[:, None], b[:, :2], b[:, :2] + b[:, 2:]], 1)
    return roi_align(images.permute(0, 3, 1, 2).float(), rois, (out_size, out_size), 1.0, 1, True)


def _interleaved(variants: dict, rounds: int) -> dict:
    for fn in variants.values():  # warm-up: thread pool, buffers, caches
        fn()
    cpu = {name: [] for name in variants}
    wall = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            c0, w0 = time.thread_time(), time.perf_counter()
            fn()
            cpu[name].append((time.thread_time() - c0) * 1000)
            wall[name].append((time.perf_counter() - w0) * 1000)
    return {name: (statistics.median(cpu[name]), statistics.median(wall[name])) for name in variants}


def profile(cache: int, out: int, batch: int, threads: int, rounds: int) -> dict:
    import torch

    from trainable.train import augment

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, cache, cache, 3), dtype=np.uint8))
    boxes, flips = augment._draw_crops(batch, cache, cache, augment.FULL_SCALE, True, g)
    box_list, flip_list = boxes.tolist(), flips.tolist()
    factors = augment._draw_jitter(batch, g)
    factor_list, matrices = factors.tolist(), augment._colour_matrices(factors, batch)
    resized = [augment._crop_resize(images[i], box_list[i], flip_list[i], out) for i in range(batch)]
    x = torch.cat(resized).float()
    x4 = torch.cat([x, torch.ones(batch, 1, out, out)], 1)  # _colour_one's input: rgb + a plane of ones
    out_batch = torch.empty(batch, 3, out, out)
    scratch = torch.empty(3 * out * out)

    def colour_per_sample():
        for i in range(batch):
            augment._colour_one(x4[i:i + 1].clone(), factor_list[i], out_batch[i:i + 1], scratch)

    def fresh_outputs():  # cpu_workspace.output_batch's recycling off: a new batch every call
        recycled, augment.output_batch = augment.output_batch, torch.empty
        try:
            return augment.train_augment(images, out, light=False, generator=g)
        finally:
            augment.output_batch = recycled

    rows = {
        "previous (grid_sample) pipeline": lambda: grid_sample_augment(images, out, g),
        "train_augment (whole)": lambda: augment.train_augment(images, out, light=False, generator=g),
        "train_augment, a fresh output batch each": fresh_outputs,
        "train_augment, light": lambda: augment.train_augment(images, out, light=True, generator=g),
        "crop + flip + uint8 resize, per sample": lambda: [augment._crop_resize(images[i], box_list[i], flip_list[i], out)
                                                          for i in range(batch)],
        "uint8 -> float copies": lambda: [x[i:i + 1].copy_(resized[i]) for i in range(batch)],
        "colour + normalise, per sample": colour_per_sample,
        "  of which the clones": lambda: [x4[i:i + 1].clone() for i in range(batch)],
        "colour + normalise, whole batch": lambda: augment._colour(x.clone(), factors, matrices, out_batch),
        "fresh output batch (page faults)": lambda: torch.empty(batch, 3, out, out).fill_(0.0),
        "resize as batched matmuls (GPU path)": lambda: augment._crop_resize_batched(images, boxes, flips, out),
        "resize as torchvision roi_align (one call)": lambda: roi_align_resize(images, boxes, out),
    }
    return _interleaved(rows, rounds)


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(prog="python -m bench.micro_augment", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", default="64,224",
                        help="output sizes, comma-separated; each from a cache 8/7 its size (the seed: 256 -> 224)")
    args = parser.parse_args(argv)
    for out in (int(v) for v in args.sizes.split(",")):
        cache = round(out * 8 / 7)
        for threads in sorted({1, os.cpu_count() or 1}):
            started = time.perf_counter()
            rows = profile(cache, out, args.batch, threads, args.rounds)
            print(f"\n{cache} -> {out} px, batch {args.batch}, {threads} torch thread(s), median of {args.rounds} "
                  f"interleaved rounds ({time.perf_counter() - started:.0f} s)")
            for name, (cpu, wall) in rows.items():
                print(f"  {name:42s} cpu {cpu:8.1f} ms   wall {wall:8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
