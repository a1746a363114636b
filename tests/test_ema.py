"""ModelEMA: decay arithmetic on parameters and buffers, state round trip, cosine switch."""

from __future__ import annotations

import torch
from torch import nn

from trainable.config import TrainConfig
from trainable.ema import ModelEMA
from trainable.models import build_model


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def test_decay_math_on_parameters_and_buffers():
    model = tiny()
    ema = ModelEMA(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()
    model(torch.randn(8, 2) * 4 + 2)  # moves the BN running stats, counts a batch
    current = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update(model)
    shadow = ema.module.state_dict()
    for key, value in current.items():
        if value.is_floating_point():
            assert torch.allclose(shadow[key], 0.9 * start[key] + 0.1 * value), key
        else:
            assert torch.equal(shadow[key], value), key  # num_batches_tracked is copied
    ema.update(model)  # second step: shadow = 0.9 * shadow + 0.1 * current
    expected = 0.9 * (0.9 * start["0.weight"] + 0.1 * current["0.weight"]) + 0.1 * current["0.weight"]
    assert torch.allclose(ema.module.state_dict()["0.weight"], expected)
    assert torch.equal(model.state_dict()["0.weight"], current["0.weight"])  # model untouched


def test_shadow_is_separate_frozen_and_in_eval():
    model = tiny()
    ema = ModelEMA(model, decay=0.99)
    assert ema.module is not model and not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_state_dict_round_trip():
    model = tiny()
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model[0].bias.fill_(3.0)
    ema.update(model)
    other = ModelEMA(tiny(), decay=0.5)
    other.load_state_dict(ema.state_dict())
    for key, value in ema.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)


def test_cosine_switch_reaches_the_shadow():
    cfg = TrainConfig(backbone="test_resnet", pretrained=False, use_cosine_classifier=True)
    model = build_model(cfg)
    ema = ModelEMA(model, decay=0.999)
    with torch.no_grad():  # the shadow's own linear head points elsewhere
        ema.module.classifier.weight.add_(torch.randn_like(ema.module.classifier.weight))
    warm = torch.nn.functional.normalize(ema.module.classifier.weight, dim=1)
    model.activate_cosine()
    ema.update(model)
    assert ema.module.cosine_active
    expected = 0.999 * warm + 0.001 * model.cosine_head.weight
    assert torch.allclose(ema.module.cosine_head.weight, expected, atol=1e-6)
    restored = ModelEMA(build_model(cfg), decay=0.999)
    restored.load_state_dict(ema.state_dict())
    assert restored.module.cosine_active
