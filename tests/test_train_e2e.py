"""End-to-end: `python -m trainable` on tiny synthetic data; files, checkpoint keys, exact resume."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainable.config import TrainConfig
from trainable.data.dataset import load_data
from trainable.data.demo.dataset import layout_paths, write_synthetic_dataset
from trainable.train.checkpoint import SEED_KEYS, load_checkpoint, save_checkpoint
from trainable.train.loop import fit

TIMING_KEYS = {"epoch_time_s", "train_time_s", "data_wait_frac", "train_images_per_s"}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_synthetic_dataset(root, seed=0, max_per_class=6, min_per_class=2, val_per_class=1, image_size=32)
    return root


def tiny_flags(root: Path, save_dir: Path, epochs: int) -> list[str]:
    flags = []
    for key, value in layout_paths(root).items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags + ["--backbone", "test_resnet", "--no-pretrained", "--image-size", "32",
                    "--progressive-image-size", "40", "--batch-size", "32", "--epochs", str(epochs),
                    "--num-workers", "0", "--save-dir", str(save_dir), "--balance-sampler", "--use-ema",
                    "--use-cosine-classifier", "--use-center-loss", "--device", "cpu"]


def run_cli(args, cache):
    env = {**os.environ, "CROPTUNE_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "trainable", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_trains_writes_files_and_resumes_exactly(tiny_root, tmp_path):
    cache = tmp_path / "cache"
    save = tmp_path / "run"
    straight = run_cli(tiny_flags(tiny_root, save, 4) + ["--save-freq", "2"], cache)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert "[Val] Epoch 4 | Loss" in straight.stdout and "MacroF1" in straight.stdout
    for name in ("best_custom.pth", "epoch_2.pth", "epoch_4.pth", "last.pth", "config.yaml"):
        assert (save / name).is_file(), name
    assert any((save / "logs").glob("events.out.tfevents.*"))
    state = load_checkpoint(save / "last.pth")
    for key in (*SEED_KEYS, "ema_state_dict", "scheduler_state_dict", "scaler_state_dict", "rng_state",
                "cosine_active", "config"):
        assert key in state, key
    assert state["epoch"] == 4 and state["cosine_active"] is True
    assert state["config"]["epochs"] == 4

    # --resume takes the run's config from the checkpoint and continues at epoch 3
    resumed_dir = tmp_path / "resumed"
    resumed = run_cli(["--resume", str(save / "epoch_2.pth"), "--save-dir", str(resumed_dir)], cache)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Epoch 3/4" in resumed.stdout and "Epoch 1/4" not in resumed.stdout
    again = load_checkpoint(resumed_dir / "last.pth")
    for key in ("train_loss", "val_loss", "val_acc", "macro_f1", "tail_mean_acc"):
        assert again[key] == state[key], key


def test_fit_two_plus_two_equals_four(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CROPTUNE_CACHE_DIR", str(tmp_path / "cache"))
    paths = {k: str(v) for k, v in layout_paths(tiny_root).items()}
    cfg = TrainConfig(**paths, backbone="test_resnet", pretrained=False, image_size=32, progressive_image_size=40,
                      batch_size=32, epochs=4, num_workers=0, device="cpu", balance_sampler=True, use_ema=True,
                      use_cosine_classifier=True, use_center_loss=True, stage2_epoch=1, stage3_epoch=2,
                      smoothing_decay_epoch1=1, smoothing_decay_epoch2=2, disable_sampler_epoch=2,
                      lr_restart_epoch=3, tail_focal_epoch=2, progressive_resize_epoch=3, final_clean_epoch=3,
                      mixup_decay_epoch1=1, mixup_decay_epoch2=2, mixup_disable_epoch=3, cutmix_disable_epoch=2,
                      center_update_epoch=2, warmup_epochs=1)
    data = load_data(cfg, progress=False)
    straight = [r.metrics for r in fit(cfg, data)]
    assert [m["epoch"] for m in straight] == [1, 2, 3, 4]
    assert [m["stage"] for m in straight] == [1, 2, 3, 3]
    assert [m["image_size"] for m in straight] == [32, 32, 32, 40]

    first = []
    for result in fit(cfg, data):
        first.append(result.metrics)
        if result.epoch == 2:
            save_checkpoint(result.state, tmp_path / "two.pth")
            break
    rest = [r.metrics for r in fit(cfg, data, state=load_checkpoint(tmp_path / "two.pth"))]
    strip = lambda ms: [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in ms]  # noqa: E731
    assert strip(first + rest) == strip(straight)


def test_save_removes_leftovers_of_killed_writes_of_the_same_file(tmp_path):
    from trainable.train.checkpoint import save_checkpoint

    dead = tmp_path / ".last.pth.abc123.tmp"          # what a writer killed mid-save leaves
    other = tmp_path / ".best_custom.pth.def456.tmp"  # another file's: not ours to judge
    dead.write_bytes(b"partial")
    other.write_bytes(b"partial")
    save_checkpoint({"epoch": 1}, tmp_path / "last.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best_custom.pth.def456.tmp", "last.pth"]
    assert torch.load(tmp_path / "last.pth", weights_only=True) == {"epoch": 1}


def test_checkpoint_write_is_atomic_and_foreign_files_rejected(tmp_path):
    from trainable.errors import UserError

    target = tmp_path / "ckpt.pth"
    torch.save({"not": "ours"}, target)
    with pytest.raises(UserError, match="not a croptune checkpoint"):
        load_checkpoint(target)
    target.write_text("garbage")
    with pytest.raises(UserError, match="not a croptune checkpoint"):
        load_checkpoint(target)
    assert list(tmp_path.iterdir()) == [target]
