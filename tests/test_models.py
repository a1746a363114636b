"""CropNet: heads, parameter groups, staged freezing, cosine head, pretrained loading."""

from __future__ import annotations

import time

import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from trainable.config import TrainConfig
from trainable.errors import UserError
from trainable.model import networks as models
from trainable.model.networks import build_model


def make(backbone="test_resnet", **kw):
    kw.setdefault("pretrained", False)
    kw.setdefault("fewshot_hidden", 16)
    return build_model(TrainConfig(backbone=backbone, **kw))


def names_of(model, group):
    ids = {id(p) for p in model.param_groups()[group]}
    return [n for n, p in model.named_parameters() if id(p) in ids]


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet"])
@pytest.mark.parametrize("model_type", ["baseline", "multitask", "fewshot"])
def test_output_shapes(backbone, model_type):
    torch.manual_seed(0)
    model = make(backbone, model_type=model_type)
    out = model(torch.randn(2, 3, 32, 32))
    assert out["logits"].shape == (2, 61)
    assert out["features"].shape == (2, model.feat_dim)
    if model_type == "multitask":
        assert out["crop_logits"].shape == (2, 10)
        assert out["severity_logits"].shape == (2, 3)
    else:
        assert set(out) == {"logits", "features"}


def test_mobilenet_feature_dim_is_the_pooled_head_width():
    model = make("mobilenetv3_small_050")
    assert model(torch.randn(2, 3, 32, 32))["features"].shape == (2, 1024)


@pytest.mark.parametrize("model_type", ["baseline", "multitask", "fewshot"])
def test_param_groups_disjoint_and_complete(model_type):
    model = make(model_type=model_type, use_cosine_classifier=True, use_center_loss=True)
    groups = model.param_groups()
    assert list(groups) == ["head", "backbone_last", "backbone_rest"]
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    head = names_of(model, "head")
    assert "cosine_head.weight" in head and "center_loss.centers" in head
    assert all(not n.startswith("backbone.") for n in head)


@pytest.mark.parametrize("backbone, last_prefixes", [
    ("test_resnet", ("backbone.layer4.",)),
    ("test_efficientnet", ("backbone.blocks.4.", "backbone.conv_head.", "backbone.bn2.")),
    # conv_head alone is a trailing head-only group: folded into the last block
    ("mobilenetv3_small_050", ("backbone.blocks.5.", "backbone.conv_head.")),
])
def test_backbone_last_is_the_last_block(backbone, last_prefixes):
    model = make(backbone)
    last = names_of(model, "backbone_last")
    assert last and all(n.startswith(last_prefixes) for n in last)
    for prefix in last_prefixes:
        assert any(n.startswith(prefix) for n in last)
    assert not any(n.startswith(last_prefixes) for n in names_of(model, "backbone_rest"))


def _bn_stats(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running_" in n}


def test_set_stage_flips_requires_grad_and_freezes_bn_stats():
    torch.manual_seed(0)
    model = make(model_type="multitask", use_cosine_classifier=True, use_center_loss=True)
    groups = {k: {id(p) for p in v} for k, v in model.param_groups().items()}
    expected = {"head": {"head"}, "partial": {"head", "backbone_last"},
                "full": {"head", "backbone_last", "backbone_rest"}}
    for stage, trainable in expected.items():
        model.set_stage(stage)
        for p in model.parameters():
            group = next(k for k, v in groups.items() if id(p) in v)
            assert p.requires_grad == (group in trainable), (stage, group)

    model.set_stage("head")
    model.eval()
    model.train()  # train() after eval() must re-freeze the norms
    assert model.training and model.dropout.training
    before = _bn_stats(model)
    model(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert all(torch.equal(before[n], b) for n, b in _bn_stats(model).items())

    model.set_stage("partial")
    before = _bn_stats(model)
    model(torch.randn(4, 3, 32, 32) * 3 + 1)
    after = _bn_stats(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith("backbone.layer4.") for n in changed)

    model.set_stage("full")
    before = _bn_stats(model)
    model(torch.randn(4, 3, 32, 32) * 3 + 1)
    after = _bn_stats(model)
    assert all(not torch.equal(before[n], after[n]) for n in before)


def test_set_stage_rejects_unknown_stage():
    with pytest.raises(ValueError):
        make().set_stage("everything")


@pytest.mark.parametrize("model_type", ["baseline", "fewshot"])
def test_activate_cosine_warm_start_and_round_trip(model_type):
    torch.manual_seed(0)
    model = make(model_type=model_type, use_cosine_classifier=True).eval()
    x = torch.randn(3, 3, 32, 32)
    final = model.classifier[3] if model_type == "fewshot" else model.classifier
    linear_logits = model(x)["logits"]
    assert not model.cosine_active

    model.activate_cosine()
    assert model.cosine_active and bool(model.cosine_flag)
    expected = torch.nn.functional.normalize(final.weight, dim=1)
    assert torch.allclose(model.cosine_head.weight, expected)
    logits = model(x)["logits"]
    assert not torch.allclose(logits, linear_logits)
    assert logits.abs().max() <= 30.0 + 1e-4  # scale * cosine

    with torch.no_grad():  # idempotent: a second call does not re-copy
        final.weight.add_(1.0)
    model.activate_cosine()
    assert torch.allclose(model.cosine_head.weight, expected)

    fresh = make(model_type=model_type, use_cosine_classifier=True).eval()
    assert not fresh.cosine_active
    fresh.load_state_dict(model.state_dict())
    assert fresh.cosine_active
    assert torch.allclose(fresh(x)["logits"], logits, atol=1e-5)


def test_activate_cosine_without_head_fails():
    with pytest.raises(RuntimeError):
        make().activate_cosine()


def test_center_loss_is_attached_and_saved():
    model = make(use_center_loss=True)
    assert model.center_loss.centers.shape == (61, model.feat_dim)
    assert "center_loss.centers" in model.state_dict()
    assert make().center_loss is None


def test_unknown_backbone():
    with pytest.raises(UserError, match="unknown --backbone not_a_net"):
        make("not_a_net")


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch"))
    return tmp_path


def test_pretrained_offline_fails_fast(empty_caches, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    started = time.monotonic()
    with pytest.raises(UserError, match="--pretrained-path FILE.*--no-pretrained"):
        make(pretrained=True)
    assert time.monotonic() - started < 5


def test_pretrained_unreachable_host_fails_fast(empty_caches, monkeypatch):
    monkeypatch.setattr(models, "_weights_host_reachable", lambda cfg: False)
    with pytest.raises(UserError, match="not cached"):
        make(pretrained=True)


def test_host_probe_is_bounded():
    started = time.monotonic()
    assert not models._weights_host_reachable({"url": "https://10.255.255.1/weights.pth"})
    assert not models._weights_host_reachable({"url": "https://no-such-host.invalid/weights.pth"})
    assert time.monotonic() - started < 2 * (models._PROBE_TIMEOUT_S + 2.5)


def test_pretrained_from_hub_cache(empty_caches, monkeypatch):
    monkeypatch.setattr(models, "_weights_host_reachable", lambda cfg: pytest.fail("must not go online"))
    source = timm.create_model("test_resnet", num_classes=1000)
    repo = empty_caches / "hf" / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file(source.state_dict(), str(repo / "snapshots" / "abc123" / "model.safetensors"))
    model = make(pretrained=True)
    assert torch.equal(model.backbone.conv1[0].weight, source.conv1[0].weight)


def test_pretrained_path(tmp_path):
    source = timm.create_model("test_resnet", num_classes=1000)  # classifier keys are ignored
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = make(pretrained=True, pretrained_path=str(tmp_path / "w.pth"))
    assert torch.equal(model.backbone.layer4[0].conv1.weight, source.layer4[0].conv1.weight)

    # a croptune checkpoint works too
    torch.save({"epoch": 1, "model_state_dict": model.state_dict()}, tmp_path / "ckpt.pth")
    again = make(pretrained=True, pretrained_path=str(tmp_path / "ckpt.pth"))
    assert torch.equal(again.backbone.conv1[0].weight, source.conv1[0].weight)

    with pytest.raises(UserError, match="no such file"):
        make(pretrained=True, pretrained_path=str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="does not fit --backbone test_efficientnet"):
        make("test_efficientnet", pretrained=True, pretrained_path=str(tmp_path / "w.pth"))
