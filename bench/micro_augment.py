"""`python -m bench.micro_augment`: where train_augment's time goes on the CPU, and a faster jitter.

Times each step of trainable.augment.train_augment on one uint8 batch (the demo's 72 -> 64 px
and the seed's 256 -> 224 px), with 1 torch thread and with all of them, and compares the
current colour jitter + normalisation with `jitter_normalise_inplace` below: the same
arithmetic in the same order, but in place on the sampled batch (no temporaries of the whole
batch) and with the grey level computed from the three channel planes, so it returns the same
values (max abs difference printed, float32 rounding only).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def jitter_normalise_inplace(x, generator):
    """What augment._normalise(augment._colour_jitter(x, g)) computes, in place on x (float NCHW in [0, 1])."""
    import torch

    from trainable.augment import _LUMA, IMAGENET_MEAN, IMAGENET_STD, JITTER

    n = x.shape[0]
    factors = (1.0 - JITTER + 2.0 * JITTER * torch.rand(n, 3, generator=generator)).to(x.device, x.dtype)
    brightness, contrast, saturation = (factors[:, i].view(n, 1, 1, 1) for i in range(3))

    def grey(t):
        return (t[:, 0:1] * _LUMA[0]).add_(t[:, 1:2], alpha=_LUMA[1]).add_(t[:, 2:3], alpha=_LUMA[2])

    x.mul_(brightness).clamp_(0.0, 1.0)
    mean_grey = grey(x).mean(dim=(2, 3), keepdim=True)
    x.sub_(mean_grey).mul_(contrast).add_(mean_grey).clamp_(0.0, 1.0)
    level = grey(x)
    x.sub_(level).mul_(saturation).add_(level).clamp_(0.0, 1.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def _ms(fn, repeats: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats * 1000


def profile(cache: int, out: int, batch: int, threads: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from trainable import augment

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, cache, cache, 3), dtype=np.uint8))
    x = augment._to_float_nchw(images)
    theta = augment._crop_flip_theta(batch, augment.FULL_SCALE, True, g)
    grid = F.affine_grid(theta, [batch, 3, out, out], align_corners=False)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    rows = {
        "train_augment (whole)": _ms(lambda: augment.train_augment(images, out, light=False, generator=g), repeats),
        "uint8 NHWC -> float NCHW": _ms(lambda: augment._to_float_nchw(images), repeats),
        "affine_grid": _ms(lambda: F.affine_grid(theta, [batch, 3, out, out], align_corners=False), repeats),
        "grid_sample": _ms(lambda: F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                                 align_corners=False), repeats),
        "colour jitter + normalise (now)": _ms(lambda: augment._normalise(augment._colour_jitter(sampled, g)),
                                               repeats),
        "colour jitter + normalise (in place)": _ms(lambda: jitter_normalise_inplace(sampled.clone(), g), repeats),
        "  of which the clone": _ms(lambda: sampled.clone(), repeats),
    }
    now = augment._normalise(augment._colour_jitter(sampled, torch.Generator().manual_seed(5)))
    new = jitter_normalise_inplace(sampled.clone(), torch.Generator().manual_seed(5))
    return {"ms": rows, "max_abs_diff": float((now - new).abs().max())}


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(prog="python -m bench.micro_augment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    for cache, out in ((72, 64), (256, 224)):
        for threads in sorted({1, os.cpu_count() or 1}):
            result = profile(cache, out, args.batch, threads, args.repeats)
            print(f"\n{cache} -> {out} px, batch {args.batch}, {threads} torch thread(s); "
                  f"max |now - in place| = {result['max_abs_diff']:.2g}")
            for name, ms in result["ms"].items():
                print(f"  {name:40s} {ms:8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
