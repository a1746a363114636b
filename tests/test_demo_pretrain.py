"""The demo's pretrained backbone: rebuilt bit for bit, loaded by --demo, kept frozen while only the head trains."""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import load_file

from trainable.cli_config import DEMO_BACKBONE, add_config_arguments, resolve_config
from trainable.data.dataset import load_data
from trainable.data.demo.dataset import layout_paths, write_synthetic_dataset
from trainable.data.demo.pretrain import main
from trainable.errors import run_cli
from trainable.model.networks import build_model
from trainable.train.loop import fit

TOY = ["--per-class", "2", "--epochs", "1", "--image-size", "32", "--batch-size", "16"]


def demo_config(*argv: str):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return resolve_config(parser.parse_args(["--demo", *argv]), prepare_demo=False)


def test_pretraining_rebuilds_the_same_bytes_at_toy_size(tmp_path):
    threads = torch.get_num_threads()
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert run_cli(main, ["--out", str(first), *TOY]) == 0
    assert run_cli(main, ["--out", str(second), *TOY]) == 0
    assert first.read_bytes() == second.read_bytes()
    assert torch.get_num_threads() == threads  # the one-thread setting does not leak to the caller
    state = load_file(str(first))
    assert state and not any(k.startswith("fc.") for k in state)  # the source task's head is dropped
    # the file fits the demo's backbone through the user's --pretrained-path path
    model = build_model(demo_config("--pretrained-path", str(first)))
    assert torch.equal(model.backbone.state_dict()["conv1.0.weight"], state["conv1.0.weight"])


def test_pretrain_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert run_cli(main, ["--out", str(tmp_path / "no" / "dir" / "w.safetensors"), *TOY]) == 2
    assert capsys.readouterr().err.startswith("error: --out ")
    assert not (tmp_path / "no").exists()


def test_demo_recipe_loads_the_shipped_backbone():
    cfg = demo_config()
    assert cfg.pretrained and cfg.pretrained_path == "demo" and DEMO_BACKBONE.is_file()
    shipped = load_file(str(DEMO_BACKBONE))
    loaded = build_model(cfg).backbone.state_dict()
    assert set(shipped) == set(loaded)
    assert all(torch.equal(loaded[k], shipped[k]) for k in shipped)


def test_head_only_stage_leaves_the_backbone_unchanged(tmp_path):
    root = write_synthetic_dataset(tmp_path / "data", seed=1, max_per_class=3, min_per_class=2, val_per_class=1,
                                   image_size=32)
    flags = [x for k, v in layout_paths(root).items() for x in ("--" + k.replace("_", "-"), v)]
    cfg = demo_config(*flags, "--epochs", "3", "--image-size", "32", "--progressive-image-size", "32",
                      "--device", "cpu", "--batch-size", "16")
    assert (cfg.warmup_epochs, cfg.stage2_epoch) == (0, 1)  # the 12-epoch recipe's shape, scaled to 3
    shipped = load_file(str(DEMO_BACKBONE))
    torch.manual_seed(cfg.seed)  # as the loop seeds before it builds the model
    head = build_model(cfg).classifier.weight.detach().clone()
    results = fit(cfg, load_data(cfg, progress=False))
    first = next(results)
    assert first.metrics["stage"] == 1
    model = first.state["model_state_dict"]
    backbone = {k[len("backbone."):]: v for k, v in model.items() if k.startswith("backbone.")}
    # weights and BatchNorm statistics alike: frozen norms stay in eval mode
    changed = [k for k in shipped if not k.endswith("num_batches_tracked") and not torch.equal(backbone[k], shipped[k])]
    assert changed == []
    assert not torch.equal(model["classifier.weight"], head)  # while the head did learn
    second = next(results)
    assert second.metrics["stage"] == 2
    assert not torch.equal(second.state["model_state_dict"]["backbone.layer4.0.conv1.weight"],
                           shipped["layer4.0.conv1.weight"])
