"""Batched augmentation: uint8 as long as possible, no PIL, one fused colour step.

uint8 NHWC batch from the decoded cache in; float32 NCHW (contiguous), ImageNet-normalised,
``out_size`` square out. Full: RandomResizedCrop as torchvision draws it (integer box, area
U(0.25, 1), log-uniform ratio 3/4-4/3), horizontal and vertical flip, then brightness,
contrast, saturation factors ~ U(0.7, 1.3) in that fixed order (torchvision shuffles it; a
fixed one keeps this branch-free), each clamped to [0, 1] as torchvision does. Light (final
clean phase): crop area 0.7-1, horizontal flip only, no jitter.

Why it is fast on the CPU (against the seed's PIL pipeline: bench/README.md, P2):
- crop = integer slicing of the cache, flipped in the one copy that makes it dense, resized
  by torch's uint8 antialiased bilinear kernel (PIL's filter, as in torchvision's RRC);
- brightness and contrast fold into one clamp, saturation and normalisation into a 3x3
  matrix + offset and a per-channel clamp: a few passes over chunks that stay in the L2
  cache (one image at 224 px), never a whole-batch float temporary;
- from 96 px up, chunks run on a thread pool (the caller's torch thread count, one intra-op
  thread each), not OpenMP: a barrier per small op is what makes 2-thread torch slow on a
  loaded machine;
- the output reuses an earlier batch's memory once nothing references it (`cpu_workspace.output_batch`).
On other devices the crop+flip+resize is two batched matmuls with the same filter weights
(`_resample_matrices`), rounded as the uint8 kernel rounds, and the colour step takes the
whole batch: CPU and GPU agree up to the uint8 kernel's rounding of its intermediate pass.

Randomness: every draw comes from the ``torch.Generator`` passed in (a CPU generator), on the
calling thread and before any image work, so a checkpoint of the generator state reproduces
the augmentation exactly, whatever the thread count. Beta draws use a numpy Generator seeded
from it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from trainable.train.cpu_workspace import output_batch, scratch, thread_pool

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FULL_SCALE = (0.25, 1.0)       # area fraction of the random resized crop
LIGHT_SCALE = (0.7, 1.0)       # final "clean" phase: mild crops only
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = 0.3                   # brightness / contrast / saturation factors in [0.7, 1.3]
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale

_LOW = tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))  # 0 and 1, normalised:
_HIGH = tuple((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))  # the last clamp
# Samples per CPU chunk: out_size² x samples <= this, so a chunk's float planes (~0.8 MB)
# stay in the L2 cache through the colour steps (one sample at 224 px, 16 at 64 px).
_CHUNK_PIXELS = 1 << 16
# Below this output size the thread pool does not pay: the per-sample work is mostly Python
# dispatch, serialised by the GIL (numbers: bench/README.md). Below it the chunks run on the
# calling thread, whose torch ops still use torch's own threads.
_POOL_MIN_SIZE = 96


def _check_batch(images: torch.Tensor, uint8: bool = False) -> None:
    if images.dim() != 4 or images.shape[-1] != 3 or (uint8 and images.dtype != torch.uint8):
        raise ValueError(f"expected a uint8 N x H x W x 3 batch, got {images.dtype} {tuple(images.shape)}")


# ---------------------------------------------------------------------- random draws
def _draw_crops(n: int, height: int, width: int, scale: tuple[float, float], vflip: bool,
                g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample integer crop boxes (x0, y0, w, h) and flips (horizontal, vertical), on the CPU.

    As torchvision's RandomResizedCrop.get_params: area = U(scale) x H x W, ratio w/h log-uniform
    in CROP_RATIO, w = round(sqrt(area ratio)), h = round(sqrt(area / ratio)), top-left corner
    uniform over the positions inside. A side that would exceed the image is clipped to it (not
    torchvision's 10 tries + centre-crop fallback): it matters only for extreme ratios near area 1.
    """
    u = torch.rand(n, 6, generator=g, dtype=torch.float64)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    w = torch.sqrt(area * ratio).round().clamp(1, width)
    h = torch.sqrt(area / ratio).round().clamp(1, height)
    # u < 1, but (W - w + 1) * u can round up to W - w + 1 in float64: hence the minimum
    x0 = torch.minimum(((width - w + 1) * u[:, 2]).floor(), width - w)
    y0 = torch.minimum(((height - h + 1) * u[:, 3]).floor(), height - h)
    boxes = torch.stack([x0, y0, w, h], 1).long()
    vertical = u[:, 5] < 0.5 if vflip else torch.zeros(n, dtype=torch.bool)
    return boxes, torch.stack([u[:, 4] < 0.5, vertical], 1)


def _draw_jitter(n: int, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation factors ~ U(1 - JITTER, 1 + JITTER), n x 3, on the CPU."""
    return 1.0 - JITTER + 2.0 * JITTER * torch.rand(n, 3, generator=g)


def _colour_matrices(factors: torch.Tensor | None, n: int) -> torch.Tensor:
    """n x 3 x 3: saturation, the brightness x contrast scale (1/255 for the uint8 range) and
    the division by the std in one matrix; identity saturation and scale 1/255 when None."""
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1)
    if factors is None:
        return (torch.eye(3) / (255.0 * std)).repeat(n, 1, 1)
    b, c, s = (factors[:, i].view(n, 1, 1) for i in range(3))
    saturation = s * torch.eye(3) + (1 - s) * torch.tensor(_LUMA).view(1, 1, 3)  # blend with luma . rgb
    return saturation * (c * b / 255.0) / std


# ---------------------------------------------------------------------- colour + normalise
_constants_cache: dict = {}  # device -> (-mean / std as 1 x 3 x 1, luma): tiny tensors cost µs each


def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device not in _constants_cache:
        _constants_cache[device] = (torch.tensor(_LOW, device=device).view(1, 3, 1), torch.tensor(_LUMA, device=device))
    return _constants_cache[device]


def _colour(x: torch.Tensor, factors: torch.Tensor | None, matrices: torch.Tensor, out: torch.Tensor,
            scratch: torch.Tensor | None = None) -> None:
    """Jitter + normalise k samples: x (k x 3 x H x W float in 0-255, contiguous; overwritten)
    -> out (k x 3 x H x W contiguous). factors: k x 3 on the CPU or None (no jitter); matrices
    from _colour_matrices, on x's device; scratch: a float buffer of x.numel() or None.

    With u = b x / 255 and m the mean grey of min(u, 1), brightness then contrast is
    clamp(c min(u, 1) + (1 - c) m, 0, 1) = beta (clamp(x, -a, t - a) + a), beta = c b / 255,
    a = (1 - c) m / beta, t = min(c + (1 - c) m, 1) / beta. beta is in the matrix; + a goes
    through it into the offset ((1 - c) m - mean) / std (its rows sum to beta / std). Then
    saturation (s y + (1 - s) grey(y)) + normalisation = matrix + offset, and a per-channel clamp.
    """
    k = x.shape[0]
    planes = x.view(k, 3, -1)
    offset, luma = _constants(x.device)
    if factors is not None:
        bright, saturate = bool((factors[:, 0] > 1).any()), bool((factors[:, 2] > 1).any())
        b, c, _ = factors.to(x.device).unbind(1)
        # contrast blends with the mean grey after brightness: min(b x, 255) differs from b x only
        # where brightness saturates (minimum: a clamp with a tensor bound is slower on the CPU)
        limited = planes
        if bright:
            limited = torch.empty_like(planes) if scratch is None else scratch.view_as(planes)
            torch.minimum(planes, (255.0 / b).view(k, 1, 1), out=limited)
        blend = (1 - c) * (limited.sum(2) @ luma) * b / (255.0 * planes.shape[2])   # (1 - c) m
        beta = c * b / 255.0
        planes.clamp_(min=(-blend / beta).view(k, 1, 1))
        planes.clamp_(max=((torch.clamp_max(c + blend, 1.0) - blend) / beta).view(k, 1, 1))
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1)
        offset = offset + blend.view(k, 1, 1) / std
    torch.baddbmm(offset, matrices, planes, out=out.view(k, 3, -1))
    if factors is not None and saturate:  # saturation > 1 can leave [0, 1]; a factor <= 1 cannot
        for ch in range(3):
            out[:, ch].clamp_(_LOW[ch], _HIGH[ch])


def _colour_one(x: torch.Tensor, factor: list[float] | None, out: torch.Tensor, scratch: torch.Tensor) -> None:
    """_colour for one CPU sample, plain-number parameters (a dozen tiny ops less); x's 4th plane
    is ones: the offset is a 4th matrix column, out is written once (baddbmm copies it in first)."""
    planes = x.view(1, 4, -1)
    b, c, s, blend = 1.0, 1.0, 1.0, 0.0  # no jitter: the normalisation alone
    if factor is not None:
        b, c, s = factor
        rgb = planes[:, :3]
        limited = torch.clamp(rgb, max=255.0 / b, out=scratch.view_as(rgb)) if b > 1 else rgb
        grey = sum(w * v for w, v in zip(_LUMA, limited.sum(2)[0].tolist(), strict=True))
        blend = (1 - c) * grey * b / (255.0 * planes.shape[2])
        beta = c * b / 255.0
        low, high = -blend / beta, (min(c + blend, 1.0) - blend) / beta
        if low > 0 or high < 255:  # else no pixel is outside: skip the pass
            rgb.clamp_(low, high)
    beta = c * b / 255.0
    matrix = [[beta / sd * (s * (ch == k) + (1 - s) * w) for k, w in enumerate(_LUMA)] + [(blend - m) / sd]
              for ch, (m, sd) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))]
    torch.bmm(torch.tensor([matrix]), planes, out=out.view(1, 3, -1))
    if s > 1:  # saturation > 1 can leave [0, 1]; a factor <= 1 cannot
        for ch in range(3):
            out[0, ch].clamp_(_LOW[ch], _HIGH[ch])


# ---------------------------------------------------------------------- crop + flip + resize
def _crop_resize(image: torch.Tensor, box: list[int], flip: list[bool], out_size: int) -> torch.Tensor:
    """One H x W x 3 uint8 image -> 1 x 3 x out x out uint8 (CPU; NCHW from the kernel).
    One dense copy either way (the kernel is slower on a strided view), flipped there:
    flipping before the resize = after it, the filter is symmetric about pixel centres."""
    x0, y0, w, h = box
    dims = [d for d, f in ((0, flip[1]), (1, flip[0])) if f]
    crop = image[y0:y0 + h, x0:x0 + w]
    crop = (crop.flip(dims) if dims else crop.contiguous()).permute(2, 0, 1).unsqueeze(0)
    if h == out_size and w == out_size:
        return crop
    return F.interpolate(crop, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False)


def _resample_matrices(start: torch.Tensor, length: torch.Tensor, flip: torch.Tensor, size: int,
                       out_size: int) -> torch.Tensor:
    """n x out x size weights resizing [start, start + length) to out_size along one axis as
    torch's (PIL's) antialiased bilinear kernel does: a triangle of half-width max(scale, 1)
    around each output centre, cut to the crop, renormalised; rows reversed where flip."""
    start, length = start.float().view(-1, 1, 1), length.float().view(-1, 1, 1)
    scale = length / out_size
    centre = start + (torch.arange(out_size, device=start.device).view(1, -1, 1) + 0.5) * scale
    taps = torch.arange(size, device=start.device).view(1, 1, -1) + 0.5
    weights = (1 - ((taps - centre) / scale.clamp(min=1.0)).abs()).clamp(min=0.0)
    weights = weights * ((taps > start) & (taps < start + length))
    weights = weights / weights.sum(2, keepdim=True)
    return torch.where(flip.view(-1, 1, 1), weights.flip(1), weights)


def _crop_resize_batched(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                         out_size: int) -> torch.Tensor:
    """The whole batch in two batched matmuls (any device): n x 3 x out x out float, 0-255,
    rounded to integers as the uint8 kernel of the CPU path rounds."""
    device = images.device
    boxes, flips = boxes.to(device), flips.to(device)
    rows = _resample_matrices(boxes[:, 1], boxes[:, 3], flips[:, 1], images.shape[1], out_size)
    cols = _resample_matrices(boxes[:, 0], boxes[:, 2], flips[:, 0], images.shape[2], out_size)
    x = images.permute(0, 3, 1, 2).float()
    x = torch.matmul(torch.matmul(rows.unsqueeze(1), x), cols.transpose(1, 2).unsqueeze(1))
    return x.round_().clamp_(0.0, 255.0).contiguous()


def _train_cpu(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, out_size: int,
               factors: torch.Tensor | None, matrices: torch.Tensor) -> torch.Tensor:
    n = images.shape[0]
    out = output_batch((n, 3, out_size, out_size))
    chunk = max(1, _CHUNK_PIXELS // (out_size * out_size))
    box_list, flip_list = boxes.tolist(), flips.tolist()
    factor_list = [None] * n if factors is None else factors.tolist()

    def one_per_chunk(mine: list[int]) -> None:
        x = scratch("x4", 4 * out_size * out_size).view(1, 4, out_size, out_size)
        x[0, 3].fill_(1.0)  # the plane of ones that _colour_one's matrix turns into the offset
        limited = scratch("limited", 3 * out_size * out_size)
        for i in mine:
            x[0, :3].copy_(_crop_resize(images[i], box_list[i], flip_list[i], out_size)[0])
            _colour_one(x, factor_list[i], out[i:i + 1], limited)

    def chunks(mine: list[int]) -> None:
        for i0 in mine:
            i1 = min(n, i0 + chunk)
            numel = (i1 - i0) * 3 * out_size * out_size
            x = scratch("x", numel).view(i1 - i0, 3, out_size, out_size)
            for i in range(i0, i1):  # the uint8 kernel returns NCHW: x's planes are dense
                x[i - i0].copy_(_crop_resize(images[i], box_list[i], flip_list[i], out_size)[0])
            jitter = None if factors is None else factors[i0:i1]
            _colour(x, jitter, matrices[i0:i1], out[i0:i1], scratch("limited", numel))

    run = one_per_chunk if chunk == 1 else chunks
    starts = list(range(0, n, chunk))
    workers = torch.get_num_threads()  # the caller's CPU budget (Tune sets it per trial)
    if workers <= 1 or len(starts) <= 1 or out_size < _POOL_MIN_SIZE:
        run(starts)
    else:  # a few tasks per thread: fewer hand-offs than one per chunk, still balanced under load
        tasks = min(len(starts), 4 * workers)
        list(thread_pool(workers).map(lambda t: run(starts[t::tasks]), range(tasks)))
    return out


# ---------------------------------------------------------------------- entry points
def train_augment(images: torch.Tensor, out_size: int, *, light: bool, generator: torch.Generator) -> torch.Tensor:
    """Full: random resized crop (area 0.25-1, ratio 3/4-4/3), horizontal and vertical flip,
    brightness/contrast/saturation jitter. Light (final clean phase): crop area 0.7-1 and
    horizontal flip only. uint8 N x H x W x 3 in, float32 N x 3 x out x out (contiguous) out.

    Resize: bilinear, antialiased (PIL's filter) from the integer crop box, rounded to uint8.
    """
    _check_batch(images, uint8=True)
    n, height, width = images.shape[:3]
    boxes, flips = _draw_crops(n, height, width, LIGHT_SCALE if light else FULL_SCALE, not light, generator)
    factors = None if light else _draw_jitter(n, generator)
    matrices = _colour_matrices(factors, n)
    train = _train_cpu if images.device.type == "cpu" else _train_batched
    return train(images, boxes, flips, out_size, factors, matrices)


def _train_batched(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, out_size: int,
                   factors: torch.Tensor | None, matrices: torch.Tensor) -> torch.Tensor:
    """The whole batch at once, for any device (CUDA, MPS): no per-sample kernel launches."""
    x = _crop_resize_batched(images, boxes, flips, out_size)
    out = torch.empty_like(x)
    _colour(x, factors, matrices.to(x.device), out)
    return out


def eval_transform(images: torch.Tensor, out_size: int) -> torch.Tensor:
    """Resize the whole cached image to out_size (bilinear, antialiased) and normalise."""
    _check_batch(images)
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (out_size, out_size):
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return ((x - mean) / std).contiguous()


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
