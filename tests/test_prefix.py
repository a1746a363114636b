"""Prefix sharing (trainable.train.prefix): the key names a state exactly, and a forked run equals a run from scratch."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainable.config import TrainConfig
from trainable.data.demo.dataset import layout_paths, write_synthetic_dataset
from trainable.train.checkpoint import load_checkpoint, save_checkpoint
from trainable.train.prefix import PrefixStore, prefix_key, shared_prefix

EPOCHS = 4
# A config whose switch-points all fall inside 4 epochs, so a late knob and a switch both act.
BASE = dict(backbone="test_resnet", pretrained=False, image_size=32, progressive_image_size=32, batch_size=8,
            num_workers=0, device="cpu", epochs=EPOCHS, warmup_epochs=1, stage2_epoch=1, stage3_epoch=2,
            lr_restart_epoch=3, progressive_resize_epoch=3, final_clean_epoch=3, center_update_epoch=3,
            smoothing_decay_epoch1=1, smoothing_decay_epoch2=2, mixup_decay_epoch1=1, mixup_decay_epoch2=2,
            mixup_disable_epoch=3, cutmix_disable_epoch=2, disable_sampler_epoch=2, tail_focal_epoch=3,
            balance_sampler=True, use_center_loss=True, use_ema=True, tail_fraction=0.5)


def config(root: Path | None = None, **changes) -> TrainConfig:
    paths = layout_paths(root) if root is not None else {}
    return TrainConfig(**{**BASE, **paths, **changes}).validate()


def test_late_knobs_and_later_switches_share_the_epochs_before_them():
    a = config()
    assert shared_prefix(a, config(tail_focal_epoch=2)) == 2
    assert shared_prefix(a, config(focal_gamma=3.0)) == 3            # gamma acts from tail_focal_epoch
    assert shared_prefix(a, config(tail_fraction=0.2)) == 3          # tail classes matter for focal only
    assert shared_prefix(a, config(center_loss_weight=0.5)) == 3     # from center_update_epoch
    assert shared_prefix(a, config(focal_gamma=3.0, loss_type="focal")) == 0  # focal on every sample
    assert shared_prefix(a, config(lr=1e-3)) == 0
    assert shared_prefix(a, config(warmup_epochs=2)) == 0  # the LR ramp differs from epoch 1
    assert shared_prefix(a, config(seed=7)) == 0
    assert shared_prefix(a, config(save_dir="elsewhere", log_interval=3)) == EPOCHS  # inert fields
    assert shared_prefix(a, a) == EPOCHS
    assert prefix_key(a, 2) == prefix_key(config(tail_focal_epoch=2), 2) != prefix_key(config(tail_focal_epoch=2), 3)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix-data")
    write_synthetic_dataset(root, seed=2, max_per_class=3, min_per_class=1, val_per_class=1, image_size=32)
    return root


def run(cfg: TrainConfig, data, state=None) -> list[dict]:
    from trainable.train.loop import fit

    return [r.metrics for r in fit(cfg, data, state=state)]


def states(cfg: TrainConfig, data) -> list[dict]:
    from trainable.train.loop import fit

    out = []
    for result in fit(cfg, data):
        path = Path(f"/tmp/croptune-prefix-test-{result.epoch}.pth")
        save_checkpoint(result.state, path)  # a copy: the result's state references live tensors
        out.append(load_checkpoint(path))
        path.unlink()
    return out


TIMING = ("train_time_s", "epoch_time_s", "data_wait_frac", "train_images_per_s")


def comparable(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def test_a_forked_run_reports_what_a_run_from_scratch_reports(data_root, tmp_path):
    from trainable.data.dataset import load_data

    donor = config(data_root)
    # differs in a switch at epoch 2 and in three late knobs: the first 2 epochs are the donor's
    other = config(data_root, cutmix_disable_epoch=3, focal_gamma=3.0, tail_fraction=0.25, center_loss_weight=0.2)
    assert shared_prefix(donor, other) == 2
    data = load_data(donor, progress=False)
    donor_states = states(donor, data)
    store = PrefixStore(tmp_path / "prefixes")
    for k, state in enumerate(donor_states[:2], start=1):
        (tmp_path / f"ckpt{k}").mkdir()
        save_checkpoint(state, tmp_path / f"ckpt{k}" / "checkpoint.pth")
        assert store.put(donor, k, tmp_path / f"ckpt{k}", [{"epoch": e} for e in range(1, k + 1)])
    assert not store.put(donor, 1, tmp_path / "ckpt1", [])  # first writer wins
    k, directory, history = store.longest(other, upto=3)
    assert (k, [m["epoch"] for m in history]) == (2, [1, 2])
    forked = run(other, data, state=load_checkpoint(directory / "checkpoint.pth"))
    scratch = run(other, data)
    assert [m["epoch"] for m in forked] == [3, 4]
    assert comparable(forked) == comparable(scratch[2:])
    assert comparable(scratch[:2]) == comparable([s["metrics"] for s in donor_states[:2]])
    assert comparable(scratch[2:]) != comparable([s["metrics"] for s in donor_states[2:]])  # they do diverge
    assert store.longest(config(data_root, seed=3), upto=3) is None


def test_the_first_rung_goes_where_the_spaces_trials_have_diverged():
    from bench.prefix_ties import demo_base
    from tuner.rungs import first_ranking_epoch, tie_profile

    base = demo_base(12)
    (stage,) = tie_profile("stage_epochs", base, trials=12, seeds=1)
    assert len(stage) == 12 and stage[0] > 0.5  # epoch 0 (warmup, head only) is shared by nearly all
    assert all(later <= earlier for earlier, later in zip(stage, stage[1:], strict=False)) and stage[-1] == 0
    assert first_ranking_epoch("stage_epochs", base, trials=12) == 5
    assert tie_profile("augmentation", base, trials=12, seeds=1) == [[0.0] * 12]  # knobs act from epoch 0
    assert first_ranking_epoch("augmentation", base, trials=12) == 1
    # focal's knobs act only once focal is on: its trials stay alike until their tail_focal_epoch
    assert first_ranking_epoch("focal", base, trials=12) == 12
