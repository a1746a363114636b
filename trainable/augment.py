"""Batched augmentation on the training device: no PIL, no per-sample Python loop.

Input is a uint8 NHWC batch straight from the decoded cache (side S); output is float32
NCHW normalised with the ImageNet mean/std at ``out_size``. The whole batch is cropped,
flipped and resized by one ``affine_grid``/``grid_sample`` with a per-sample affine matrix;
colour jitter is a few per-sample broadcast multiplies.

Randomness: every draw comes from the ``torch.Generator`` passed in (a CPU generator; the
draws are moved to the images' device), so a checkpoint of the generator state reproduces
the augmentation exactly. Beta draws use a numpy Generator seeded from it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FULL_SCALE = (0.25, 1.0)       # area fraction of the random resized crop
LIGHT_SCALE = (0.7, 1.0)       # final "clean" phase: mild crops only
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = 0.3                   # brightness / contrast / saturation factors in [0.7, 1.3]
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale


def _to_float_nchw(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected a uint8 N x H x W x 3 batch, got shape {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def _crop_flip_theta(n: int, scale: tuple[float, float], vflip: bool, g: torch.Generator) -> torch.Tensor:
    """Per-sample 2x3 affine matrices (normalised coords) of a random resized crop + flips.

    Area fraction ~ U(scale), aspect ratio log-uniform in CROP_RATIO, as torchvision's
    RandomResizedCrop; where the box would exceed the image its sides are clipped to it
    (instead of torchvision's 10 rejection tries), which only matters for extreme ratios
    at area 1. The box centre is uniform over the positions that keep the box inside.
    """
    u = torch.rand(n, 6, generator=g, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_ratio = math.log(CROP_RATIO[0]) + (math.log(CROP_RATIO[1]) - math.log(CROP_RATIO[0])) * u[:, 1]
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(area * ratio).clamp(max=1.0)   # fractions of the image side
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    centre_x = (1.0 - width) * (2.0 * u[:, 2] - 1.0)   # in [-(1-w), 1-w]: box stays inside
    centre_y = (1.0 - height) * (2.0 * u[:, 3] - 1.0)
    flip_x = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    flip_y = torch.where(u[:, 5] < 0.5, -1.0, 1.0) if vflip else torch.ones(n, dtype=torch.float64)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = width * flip_x
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height * flip_y
    theta[:, 1, 2] = centre_y
    return theta.float()


def _colour_jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation factors ~ U(1 - JITTER, 1 + JITTER) per sample, in
    that fixed order (torchvision shuffles the order; a fixed one keeps this branch-free)."""
    n = x.shape[0]
    factors = (1.0 - JITTER + 2.0 * JITTER * torch.rand(n, 3, generator=g)).to(x.device, x.dtype)
    brightness, contrast, saturation = (factors[:, i].view(n, 1, 1, 1) for i in range(3))
    luma = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x * brightness).clamp_(0.0, 1.0)
    mean_grey = (x * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean_grey) * contrast + mean_grey).clamp_(0.0, 1.0)
    grey = (x * luma).sum(dim=1, keepdim=True)
    return ((x - grey) * saturation + grey).clamp_(0.0, 1.0)


def train_augment(images: torch.Tensor, out_size: int, *, light: bool, generator: torch.Generator) -> torch.Tensor:
    """Full: random resized crop (area 0.25-1, ratio 3/4-4/3), horizontal and vertical flip,
    colour jitter. Light (final clean phase): crop area 0.7-1 and horizontal flip only.

    Bilinear sampling without antialiasing: crops of the cache (S >= out_size) are at most
    S/out_size larger than the output, a mild downscale (8/7 for the seed's 256 -> 224).
    """
    x = _to_float_nchw(images)
    n = x.shape[0]
    theta = _crop_flip_theta(n, LIGHT_SCALE if light else FULL_SCALE, vflip=not light, g=generator)
    grid = F.affine_grid(theta.to(x.device), [n, 3, out_size, out_size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if not light:
        x = _colour_jitter(x, generator)
    return _normalise(x)


def eval_transform(images: torch.Tensor, out_size: int) -> torch.Tensor:
    """Resize the whole cached image to out_size (bilinear, antialiased) and normalise."""
    x = _to_float_nchw(images)
    if x.shape[-2:] != (out_size, out_size):
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)
    return _normalise(x)


# ---------------------------------------------------------------------- mixup / cutmix
# Why not timm.data.Mixup: it returns soft (one-hot mixed, smoothed) targets, while the
# recipe needs the two hard targets and lam so that class weights and focal-on-tail-only
# stay per sample (losses.mixed_loss); it also chooses between mixup and cutmix with one
# `prob` + `switch_prob`, whereas the seed has independent mixup/cutmix probabilities;
# and it draws from numpy's global RNG (so does timm's rand_bbox), which a checkpoint
# cannot restore. The box sampling below is timm's rand_bbox + cutmix_bbox_and_lam
# (correct_lam=True) with the generator passed in.


def _rand_bbox(height: int, width: int, lam: float, g: torch.Generator) -> tuple[int, int, int, int]:
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, (1,), generator=g))
    cx = int(torch.randint(0, width, (1,), generator=g))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, width)
    return y0, y1, x0, x1


def _beta(alpha: float, g: torch.Generator) -> float:
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mix_batch(images: torch.Tensor, *, mixup_alpha: float, cutmix_alpha: float, mixup_prob: float,
              cutmix_prob: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix a batch with a random permutation of itself: with probability cutmix_prob CutMix
    (when cutmix_alpha > 0), otherwise with probability mixup_prob Mixup (when mixup_alpha >
    0), otherwise nothing. lam ~ Beta(alpha, alpha); for CutMix lam is corrected to the real
    (border-clipped) box area: lam = 1 - box_area / image_area.

    Returns (images, perm, lam): image i now holds lam of its own target and 1 - lam of
    target perm[i]; permute any target (labels, crops, severities) with ``perm``. Without
    mixing: the input images, perm = arange(N) and lam = 1.0.
    """
    n = images.shape[0]
    coin = torch.rand(2, generator=generator)
    use_cutmix = cutmix_alpha > 0 and float(coin[0]) < cutmix_prob
    use_mixup = not use_cutmix and mixup_alpha > 0 and float(coin[1]) < mixup_prob
    if not (use_cutmix or use_mixup):
        return images, torch.arange(n, device=images.device), 1.0
    perm = torch.randperm(n, generator=generator).to(images.device)
    if use_mixup:
        lam = _beta(mixup_alpha, generator)
        return images * lam + images[perm] * (1.0 - lam), perm, lam
    lam = _beta(cutmix_alpha, generator)
    height, width = images.shape[-2:]
    y0, y1, x0, x1 = _rand_bbox(height, width, lam, generator)
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[perm, :, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    return mixed, perm, lam
