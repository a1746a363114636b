"""Batched augmentation and mixup/cutmix."""

from __future__ import annotations

import pytest
import torch

from trainable.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    _crop_flip_theta,
    eval_transform,
    mix_batch,
    train_augment,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def batch(n=6, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)


def unnormalise(x):
    return x * STD + MEAN


@pytest.mark.parametrize("light", [False, True])
def test_shapes_dtype_range(light):
    out = train_augment(batch(), 32, light=light, generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    pixels = unnormalise(out)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_deterministic_for_a_fixed_generator():
    images = batch()
    a = train_augment(images, 32, light=False, generator=torch.Generator().manual_seed(3))
    b = train_augment(images, 32, light=False, generator=torch.Generator().manual_seed(3))
    c = train_augment(images, 32, light=False, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


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


def test_crop_boxes_stay_inside_and_follow_the_scale():
    theta = _crop_flip_theta(2000, (0.25, 1.0), vflip=True, g=torch.Generator().manual_seed(0))
    width, height = theta[:, 0, 0].abs(), theta[:, 1, 1].abs()
    assert (theta[:, 0, 2].abs() + width <= 1 + 1e-6).all()
    assert (theta[:, 1, 2].abs() + height <= 1 + 1e-6).all()
    area = width * height
    assert area.min() >= 0.25 * 0.75 and area.max() <= 1 + 1e-6  # clipping can only shrink
    assert 0.3 < (theta[:, 0, 0] < 0).float().mean() < 0.7   # horizontal flips
    assert 0.3 < (theta[:, 1, 1] < 0).float().mean() < 0.7   # vertical flips
    light = _crop_flip_theta(500, (0.7, 1.0), vflip=False, g=torch.Generator().manual_seed(0))
    assert (light[:, 1, 1] > 0).all()


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
    assert torch.allclose(out.cpu(), cpu, atol=1e-4)
    mixed, perm, _ = mix_batch(out, mixup_alpha=0.4, cutmix_alpha=0.6, mixup_prob=1.0, cutmix_prob=1.0,
                               generator=torch.Generator().manual_seed(0))
    assert mixed.device == images.device and perm.device == images.device
