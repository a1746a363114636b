"""Batched augmentation and mixup/cutmix."""

from __future__ import annotations

import pytest
import torch

from trainable.train import augment
from trainable.train.augment import (
    _LUMA,
    FULL_SCALE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LIGHT_SCALE,
    _colour,
    _colour_matrices,
    _crop_resize,
    _crop_resize_batched,
    _draw_crops,
    _draw_jitter,
    eval_transform,
    mix_batch,
    train_augment,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def batch(n=6, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)


def bright_batch(n=6, size=40, seed=0):
    """Half random, half bright and low-contrast: brightness > 1 saturates, contrast < 1 and
    saturation > 1 leave [0, 1]: every clamp of the jitter is exercised."""
    images = batch(n, size, seed)
    images[: n // 2] = (images[: n // 2].float() * 0.3 + 175).to(torch.uint8)
    return images


def unnormalise(x):
    return x * STD + MEAN


def reference(images, out_size, light, seed):
    """The documented semantics written plainly, step by step in float (torchvision's
    brightness, contrast, saturation formulas), on the same crops as train_augment."""
    g = torch.Generator().manual_seed(seed)
    n, height, width = images.shape[:3]
    boxes, flips = _draw_crops(n, height, width, LIGHT_SCALE if light else FULL_SCALE, not light, g)
    factors = None if light else _draw_jitter(n, g)
    luma = torch.tensor(_LUMA).view(1, 3, 1, 1)
    result = []
    for i in range(n):
        x = _crop_resize(images[i], boxes[i].tolist(), flips[i].tolist(), out_size).float() / 255
        if factors is not None:
            b, c, s = factors[i].tolist()
            x = (x * b).clamp(0, 1)
            mean_grey = (x * luma).sum(1, keepdim=True).mean()
            x = (c * x + (1 - c) * mean_grey).clamp(0, 1)
            grey = (x * luma).sum(1, keepdim=True)
            x = (s * x + (1 - s) * grey).clamp(0, 1)
        result.append((x - MEAN) / STD)
    return torch.cat(result)


@pytest.mark.parametrize("light", [False, True])
def test_shapes_dtype_range(light):
    out = train_augment(bright_batch(), 32, light=light, generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32 and out.is_contiguous()
    pixels = unnormalise(out)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


@pytest.mark.parametrize("light", [False, True])
@pytest.mark.parametrize("size,out_size", [(40, 32), (72, 64), (128, 112)])  # chunks of 64, 16 and 5 samples
def test_matches_the_plain_reference(light, size, out_size, monkeypatch):
    images = bright_batch(7, size)
    expected = reference(images, out_size, light, seed=5)
    out = train_augment(images, out_size, light=light, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, expected, atol=2e-5)
    monkeypatch.setattr(augment, "_CHUNK_PIXELS", 1)  # one sample per chunk: the plain-number path
    out = train_augment(images, out_size, light=light, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, expected, atol=2e-5)


def test_batched_colour_matches_the_per_sample_one():
    """_colour on a whole batch (the device-generic path) = _colour_one per sample (the CPU's)."""
    x = torch.rand(6, 3, 24, 24) * 255
    factors = _draw_jitter(6, torch.Generator().manual_seed(0))
    factors[0] = torch.tensor([1.3, 0.7, 1.3])
    factors[1] = torch.tensor([0.7, 1.3, 0.7])
    matrices = _colour_matrices(factors, 6)
    batched, single = torch.empty(6, 3, 24, 24), torch.empty(6, 3, 24, 24)
    _colour(x.clone(), factors, matrices, batched)
    ones = torch.ones(6, 1, 24, 24)
    for i in range(6):
        augment._colour_one(torch.cat([x[i:i + 1], ones[i:i + 1]], 1), factors[i].tolist(), single[i:i + 1],
                            torch.empty(3 * 24 * 24))
    assert torch.allclose(batched, single, atol=1e-5)
    _colour(x.clone(), None, _colour_matrices(None, 6), batched)  # no jitter (light)
    for i in range(6):
        augment._colour_one(torch.cat([x[i:i + 1], ones[i:i + 1]], 1), None, single[i:i + 1], torch.empty(0))
    assert torch.allclose(batched, single, atol=1e-5)


def test_deterministic_for_a_fixed_generator():
    images = batch()
    a = train_augment(images, 32, light=False, generator=torch.Generator().manual_seed(3))
    b = train_augment(images, 32, light=False, generator=torch.Generator().manual_seed(3))
    c = train_augment(images, 32, light=False, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("size,out_size", [(40, 32), (160, 128)])
def test_same_result_and_generator_state_whatever_the_thread_count(size, out_size):
    images = bright_batch(9, size)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):  # 3 threads, even on a 1-core machine: the pool at 128 px, torch's own at 32
            torch.set_num_threads(count)
            g = torch.Generator().manual_seed(7)
            results.append((train_augment(images, out_size, light=False, generator=g), g.get_state()))
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_returned_batches_are_never_overwritten():
    """Output memory is reused only once nothing references the previous batch."""
    images = batch(4, 256)
    first = train_augment(images, 224, light=True, generator=torch.Generator().manual_seed(0))
    kept = first.clone()
    view = first[1:]
    del first
    second = train_augment(images, 224, light=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(view, kept[1:]) and view.data_ptr() != second.data_ptr()
    del view, second
    pointers = [train_augment(images, 224, light=True, generator=torch.Generator().manual_seed(seed)).data_ptr()
                for seed in range(2)]
    assert pointers[0] == pointers[1]  # a batch nobody holds any more: its memory comes back


def test_a_batch_saved_for_backward_is_not_reused():
    images = batch(4, 256)
    first = train_augment(images, 224, light=False, generator=torch.Generator().manual_seed(0))
    kept = first.clone()
    conv = torch.nn.Conv2d(3, 1, 1, bias=False)
    loss = conv(first).sum()  # saves `first` for the weight's gradient
    del first
    train_augment(images, 224, light=False, generator=torch.Generator().manual_seed(1))
    loss.backward()  # d loss / d weight[c] = sum of input channel c: read from the saved batch
    assert torch.allclose(conv.weight.grad.view(3), kept.sum(dim=(0, 2, 3)), rtol=1e-4)


def test_light_differs_from_full_and_keeps_colours():
    images = batch()
    full = train_augment(images, 32, light=False, generator=torch.Generator().manual_seed(0))
    light = train_augment(images, 32, light=True, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(full, light)
    # a flat-colour image stays exactly that colour under light (crop + flip only), not under full
    flat = torch.zeros(4, 40, 40, 3, dtype=torch.uint8)
    flat[..., 0], flat[..., 1], flat[..., 2] = 200, 100, 50
    colour = torch.tensor([200, 100, 50]).view(1, 3, 1, 1) / 255.0
    light = unnormalise(train_augment(flat, 32, light=True, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(light, colour.expand_as(light), atol=1e-5)
    full = unnormalise(train_augment(flat, 32, light=False, generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(full, colour.expand_as(full), atol=1e-3)


def test_flips_mirror_the_crop():
    images = batch(1, 48)
    box = [5, 3, 30, 40]
    plain = _crop_resize(images[0], box, [False, False], 32)
    assert torch.equal(_crop_resize(images[0], box, [True, False], 32), plain.flip(3))
    assert torch.equal(_crop_resize(images[0], box, [False, True], 32), plain.flip(2))


def test_crop_boxes_stay_inside_and_follow_the_scale():
    size = 256
    boxes, flips = _draw_crops(4000, size, size, FULL_SCALE, vflip=True, g=torch.Generator().manual_seed(0))
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= size).all() and (y0 + h <= size).all()
    area = (w * h).double() / size**2
    assert area.min() >= 0.25 * 0.75 and area.max() <= 1.0  # clipping can only shrink
    unclipped = (w < size) & (h < size)  # area ~ U(0.25, 1) (up to rounding) where nothing was clipped
    assert area[unclipped].min() > 0.24 and abs(area[area < 0.75].mean().item() - 0.5) < 0.01
    ratio = (w.double() / h)[unclipped]
    assert ratio.min() > 3 / 4 * 0.97 and ratio.max() < 4 / 3 * 1.03
    assert abs(ratio.log().mean().item()) < 0.01  # log-uniform, symmetric around 1
    assert 0.45 < flips[:, 0].float().mean() < 0.55 and 0.45 < flips[:, 1].float().mean() < 0.55
    # the top-left corner covers the whole free range
    assert (x0 == 0).any() and (x0 + w == size).any()
    light_boxes, light_flips = _draw_crops(500, size, size, LIGHT_SCALE, vflip=False,
                                           g=torch.Generator().manual_seed(0))
    assert not light_flips[:, 1].any() and 0.4 < light_flips[:, 0].float().mean() < 0.6
    assert ((light_boxes[:, 2] * light_boxes[:, 3]).double() / size**2).min() >= 0.7 * 0.97


def test_jitter_factors():
    factors = _draw_jitter(4000, torch.Generator().manual_seed(0))
    assert factors.min() >= 0.7 and factors.max() <= 1.3
    assert torch.allclose(factors.mean(0), torch.ones(3), atol=0.02)


def test_batched_resize_matches_the_uint8_kernel():
    """The device-generic crop+flip+resize (two matmuls) = the CPU's uint8 antialiased kernel,
    up to that kernel's rounding of its intermediate pass (at most 1 of 255)."""
    for size, out_size in ((40, 32), (72, 64), (256, 224)):
        images = batch(8, size)
        boxes, flips = _draw_crops(8, size, size, FULL_SCALE, True, torch.Generator().manual_seed(size))
        batched = _crop_resize_batched(images, boxes, flips, out_size)
        per_sample = torch.cat([_crop_resize(images[i], boxes[i].tolist(), flips[i].tolist(), out_size).float()
                                for i in range(8)])
        difference = (batched - per_sample).abs()
        assert difference.max() <= 1 and difference.mean() < 0.3
    flat = torch.full((2, 40, 40, 3), 77, dtype=torch.uint8)
    boxes, flips = _draw_crops(2, 40, 40, FULL_SCALE, True, torch.Generator().manual_seed(0))
    assert torch.equal(_crop_resize_batched(flat, boxes, flips, 32), torch.full((2, 3, 32, 32), 77.0))


@pytest.mark.parametrize("light", [False, True])
def test_device_generic_path_matches_the_cpu_one(light, monkeypatch):
    """What train_augment runs on CUDA / MPS, run here on the CPU."""
    images = bright_batch(8, 72)
    cpu = train_augment(images, 64, light=light, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(augment, "_train_cpu", augment._train_batched)
    generic = train_augment(images, 64, light=light, generator=torch.Generator().manual_seed(2))
    difference = (generic - cpu).abs()  # the uint8 kernel's intermediate rounding, through the jitter
    assert difference.max() < 1.3 * 1.3 * 1.6 / 255 / 0.224 + 1e-4 and difference.mean() < 0.01
    assert generic.shape == cpu.shape and generic.is_contiguous()


def test_rejects_non_uint8_and_bad_shapes():
    with pytest.raises(ValueError):
        train_augment(batch().float(), 32, light=False, generator=torch.Generator())
    with pytest.raises(ValueError):
        train_augment(batch()[..., :2], 32, light=False, generator=torch.Generator())


def test_eval_transform():
    images = batch(size=32)
    out = eval_transform(images, 32)
    expected = (images.permute(0, 3, 1, 2).float() / 255 - MEAN) / STD
    assert torch.allclose(out, expected, atol=1e-6)
    assert eval_transform(batch(size=40), 24).shape == (6, 3, 24, 24)


def distinct_images(n=8):
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 16, 20).clone()


def test_cutmix_lam_is_the_box_area_ratio():
    images = distinct_images()
    checked = 0
    for seed in range(20):
        mixed, perm, lam = mix_batch(images, mixup_alpha=0.4, cutmix_alpha=1.0, mixup_prob=1.0,
                                     cutmix_prob=1.0, generator=torch.Generator().manual_seed(seed))
        for i in range(len(images)):
            if perm[i] != i:
                pasted = (mixed[i, 0] == perm[i]).float().mean().item()
                assert pasted == pytest.approx(1.0 - lam)
                checked += 1
    assert checked > 0


def test_mixup_blend():
    images = distinct_images()
    mixed, perm, lam = mix_batch(images, mixup_alpha=0.4, cutmix_alpha=0.6, mixup_prob=1.0, cutmix_prob=0.0,
                                 generator=torch.Generator().manual_seed(0))
    assert 0.0 < lam < 1.0
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[perm])


@pytest.mark.parametrize("kwargs", [
    dict(mixup_alpha=0.4, cutmix_alpha=0.6, mixup_prob=0.0, cutmix_prob=0.0),
    dict(mixup_alpha=0.0, cutmix_alpha=0.0, mixup_prob=1.0, cutmix_prob=1.0),
])
def test_no_mixing_is_identity(kwargs):
    images = distinct_images()
    mixed, perm, lam = mix_batch(images, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(mixed, images) and lam == 1.0
    assert perm.tolist() == list(range(len(images)))


def test_mix_batch_deterministic():
    images = distinct_images()
    kwargs = dict(mixup_alpha=0.4, cutmix_alpha=0.6, mixup_prob=0.7, cutmix_prob=0.5)
    for seed in range(5):
        a = mix_batch(images, generator=torch.Generator().manual_seed(seed), **kwargs)
        b = mix_batch(images, generator=torch.Generator().manual_seed(seed), **kwargs)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_the_images_device():
    images = batch().cuda()
    out = train_augment(images, 32, light=False, generator=torch.Generator().manual_seed(0))
    assert out.device == images.device
    cpu = train_augment(images.cpu(), 32, light=False, generator=torch.Generator().manual_seed(0))
    # the CPU's uint8 resize rounds its intermediate pass: <= 1/255 before the jitter, which
    # scales it by at most 1.3 x 1.3 (brightness, contrast) x 1.6 (saturation row) / 0.224 (std)
    difference = (out.cpu() - cpu).abs()
    assert difference.max() < 1.3 * 1.3 * 1.6 / 255 / 0.224 + 1e-4 and difference.mean() < 0.01
    mixed, perm, _ = mix_batch(out, mixup_alpha=0.4, cutmix_alpha=0.6, mixup_prob=1.0, cutmix_prob=1.0,
                               generator=torch.Generator().manual_seed(0))
    assert mixed.device == images.device and perm.device == images.device
