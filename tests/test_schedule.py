"""plan() against the seed's timeline table ("完整训练时间线"), row by row, epoch by epoch.

Where the table's 5-epoch cells are coarser than the flags (mixup at 15-19, smoothing at
18-24), the seed's flag defaults win, as the issue specifies: mixup off from 15, smoothing 0 from 18.
"""

import pytest

from trainable.config import TrainConfig
from trainable.train.schedule import describe, plan, timeline

SEED = TrainConfig(balance_sampler=True, use_cosine_classifier=True, use_center_loss=True)

# row name -> [(first epoch, last epoch inclusive, value)], read off the seed's table + flag defaults
TIMELINE = {
    "warmup": [(0, 4, True), (5, 49, False)],
    "stage": [(0, 9, 1), (10, 19, 2), (20, 49, 3)],
    "use_sampler": [(0, 14, True), (15, 49, False)],
    "mixup_alpha": [(0, 9, 0.4), (10, 11, 0.2), (12, 14, 0.1), (15, 49, 0.0)],
    "cutmix_alpha": [(0, 9, 0.6), (10, 49, 0.0)],
    "label_smoothing": [(0, 11, 0.05), (12, 17, 0.02), (18, 49, 0.0)],
    "focal_tail": [(0, 17, False), (18, 49, True)],
    "lr_scale": [(0, 9, 1.0), (10, 24, 1.2), (25, 49, 0.48)],
    "image_size": [(0, 29, 224), (30, 49, 256)],
    "light_aug": [(0, 39, False), (40, 49, True)],
    "cosine_head": [(0, 34, False), (35, 49, True)],
    "center_loss": [(0, 34, False), (35, 49, True)],
}


@pytest.mark.parametrize("row", sorted(TIMELINE))
def test_plan_matches_seed_timeline(row):
    for first, last, expected in TIMELINE[row]:
        for epoch in range(first, last + 1):
            got = getattr(plan(SEED, epoch), row)
            assert got == pytest.approx(expected), f"{row} at epoch {epoch}: {got} != {expected}"


def test_stage_names_and_timeline_length():
    plans = timeline(SEED)
    assert len(plans) == 50
    assert [plans[e].stage_name for e in (0, 10, 20)] == ["head", "partial", "full"]


def test_defaults_keep_sampler_and_feature_head_off():
    default = TrainConfig()
    assert not any(p.use_sampler or p.cosine_head or p.center_loss for p in timeline(default))


def test_fewshot_frozen_backbone_stays_in_head_stage_but_keeps_lr_bumps():
    cfg = TrainConfig(model_type="fewshot")
    assert {p.stage for p in timeline(cfg)} == {1}
    assert plan(cfg, 30).lr_scale == pytest.approx(0.48)
    unfrozen = TrainConfig(model_type="fewshot", fewshot_freeze_backbone=False)
    assert plan(unfrozen, 25).stage == 3


def test_decays_are_proportional_to_searched_values():
    cfg = TrainConfig(mixup_alpha=0.8, label_smoothing=0.1)
    assert plan(cfg, 10).mixup_alpha == pytest.approx(0.4)
    assert plan(cfg, 12).mixup_alpha == pytest.approx(0.2)
    assert plan(cfg, 13).label_smoothing == pytest.approx(0.04)


def test_plan_is_pure():
    assert plan(SEED, 27) == plan(SEED, 27)
    assert "stage2@10" in describe(SEED)
