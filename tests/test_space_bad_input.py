"""Bad search spaces through run_search.py's main(), as tests/test_faults.py's bad-input cases
run (in this process, wrapped as the command wraps it): one `error:` line, exit 2, nothing
written. Non-finite bounds, a backbone choice that cannot be built, fields a search cannot
tune; and the backbone choices the model check builds (the base first, each other once).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import tiny_flags

from trainable.config import TrainConfig
from trainable.data.demo.dataset import write_synthetic_dataset
from tuner.prepare import models_to_check


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("space-data")
    return write_synthetic_dataset(root / "data", seed=0, max_per_class=4, min_per_class=2, val_per_class=1,
                                   image_size=32)


BAD_SPACES = {
    "infinite bound": ("lr: {type: float, low: 1.0e-5, high: .inf}", "lr: high must be a finite number"),
    "nan bound": ("lr: {type: loguniform, low: .nan, high: 0.1}", "lr: low must be a finite number"),
    "backbone choice that does not exist": (
        "backbone: {type: categorical, choices: [test_resnet, no_such_model_xyz]}",
        "the choice backbone=no_such_model_xyz: unknown --backbone no_such_model_xyz"),
    "train_dir": ("train_dir: {type: categorical, choices: [data/cleaned/train, /nonexistent/b]}",
                  "train_dir: cannot be searched: every trial trains on the data the search decodes once"),
    "image_size": ("image_size: {type: int, low: 32, high: 64}", "image_size: cannot be searched: the images"),
    "epochs": ("epochs: {type: int, low: 1, high: 3}", "epochs: cannot be searched: ASHA"),
    "device": ("device: {type: categorical, choices: [cpu, cuda]}", "device: cannot be searched"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_is_one_line_exit_2_and_writes_nothing(case, dataset, tmp_path, monkeypatch, bad_search):
    text, words = BAD_SPACES[case]
    space = tmp_path / "space.yaml"
    space.write_text(text + "\n")
    cwd, cache = tmp_path / "cwd", tmp_path / "cache"  # the default MLflow store would be cwd/mlflow.db
    cwd.mkdir()
    argv = [*tiny_flags(dataset, cwd / "results", "bad"), "--space", str(space)]
    monkeypatch.setenv("CROPTUNE_CACHE_DIR", str(cache))
    code, stdout, stderr = bad_search(argv, cwd)
    assert code == 2, (stdout[-2000:], stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --space {space}: ") and words in lines[0], stderr
    assert lines[0].count(str(space)) == 1 and "ordered switches" not in lines[0]
    assert "Traceback" not in stdout + stderr
    assert list(cwd.iterdir()) == []  # no experiment dir, no mlflow.db
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


def _settings(space, base: TrainConfig, **changes) -> SimpleNamespace:
    return SimpleNamespace(**{"space": space, "base": base, "resume": False, "address": None, **changes})


def test_each_other_backbone_choice_is_checked_once_after_the_base(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("backbone: {type: categorical, choices: [resnet18, test_resnet, efficientnet_b0]}\n"
                     "pretrained: {type: categorical, choices: [false, true]}\n")
    base = TrainConfig(backbone="test_resnet", pretrained=False)
    checks = models_to_check(_settings(str(space), base))
    # weights are wanted by some trials: every backbone, the base's too, is checked with them
    assert [(what, cfg.backbone, cfg.pretrained) for what, cfg in checks] == [
        ("", "test_resnet", False), ("backbone=resnet18, pretrained=True", "resnet18", True),
        ("pretrained=True", "test_resnet", True), ("backbone=efficientnet_b0, pretrained=True", "efficientnet_b0", True)]
    # on a cluster the nodes hold the weights: only the architectures; on --resume nothing new
    on_cluster = models_to_check(_settings(str(space), base, address="auto"))
    assert [(cfg.backbone, cfg.pretrained) for _, cfg in on_cluster] == [
        ("test_resnet", False), ("resnet18", False), ("efficientnet_b0", False)]
    assert len(models_to_check(_settings(str(space), base, resume=True))) == 1
    assert len(models_to_check(_settings("full", base))) == 1  # built-in spaces choose no backbone


def test_a_space_of_real_backbones_passes_the_checks(dataset, tmp_path, monkeypatch):
    """Every choice is built (on the meta device, so a big one costs no weights) and all pass."""
    from tuner.cli import parse_settings
    from tuner.prepare import prepare_search

    space = tmp_path / "space.yaml"
    space.write_text("backbone: {type: categorical, choices: [test_resnet, resnet18, vit_base_patch16_224]}\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prepare_search(parse_settings([*tiny_flags(dataset, tmp_path / "results", "ok"), "--space", str(space)]), [])
    assert not (tmp_path / "results").exists()


def test_the_cheap_build_of_a_choice_fails_as_the_real_one_does(tmp_path):
    """A choice is built on the meta device: the same UserErrors as build_model (an unknown
    backbone, a --pretrained-path that fits another backbone), and no error for one that fits."""
    import timm
    import torch

    from trainable.errors import UserError
    from trainable.model.networks import build_model
    from tuner.prepare import _build_cheaply

    weights = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), weights)
    _build_cheaply(TrainConfig(backbone="test_resnet", pretrained=True, pretrained_path=str(weights)))
    for cfg in (TrainConfig(backbone="no_such_model_xyz", pretrained=False),
                TrainConfig(backbone="resnet18", pretrained=True, pretrained_path=str(weights))):
        with pytest.raises(UserError) as real:
            build_model(cfg)
        with pytest.raises(UserError) as cheap:
            _build_cheaply(cfg)
        assert str(cheap.value) == str(real.value)
