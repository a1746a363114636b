"""The Tune trainable's own logic, with Ray's per-trial calls faked (no Ray session needed), and
the test-only fault injection wrapped around it (tests/fault_injection.py).

The real thing runs in tests/test_search_e2e.py.
"""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fault_injection import run_with_faults

import trainable.train.loop
import trainable.tune_entry as te
from trainable.config import TrainConfig
from trainable.errors import DivergedError, UserError

METRICS = {"train_loss": 2.0, "train_acc": 10.0, "val_loss": 2.1, "val_acc": 12.0, "tail_acc": 3.0,
           "macro_f1": 0.1, "lr": 1e-3, "stage": 1, "image_size": 32, "epoch_time_s": 0.5, "epoch": 1}


class FakeRay:
    def __init__(self, gpu_ids=(), assigned=None):
        self.gpu_ids, self.assigned = list(gpu_ids), dict(assigned or {"CPU": 1.0})

    def install(self, monkeypatch):
        monkeypatch.setattr(te.ray, "get_gpu_ids", lambda: self.gpu_ids)
        monkeypatch.setattr(te.ray, "get_runtime_context",
                            lambda: SimpleNamespace(get_assigned_resources=lambda: self.assigned))


@pytest.mark.parametrize("gpu_ids, assigned, cuda, mps, requested, expected", [
    ([0], {"CPU": 1, "GPU": 1}, True, False, "auto", "cuda"),
    ([], {"CPU": 1}, True, False, "auto", "cpu"),            # sees CUDA, was given none: CPU
    ([], {"CPU": 1, "mps": 1}, False, True, "auto", "mps"),  # Apple GPU via the custom resource
    ([0], {"CPU": 1, "GPU": 1}, False, True, "auto", "mps"),  # Ray's own GPU: 1 on a Mac
    ([], {"CPU": 1}, False, True, "auto", "cpu"),
    ([0], {"CPU": 1, "GPU": 1}, True, False, "cpu", "cpu"),   # --device cpu wins
])
def test_device_comes_from_rays_assignment(monkeypatch, gpu_ids, assigned, cuda, mps, requested, expected):
    FakeRay(gpu_ids, assigned).install(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr("trainable.devices.mps_available", lambda: mps)
    assert te.trial_device(requested) == expected


def test_forced_device_without_assignment_fails(monkeypatch):
    FakeRay().install(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match="assigned no cuda"):
        te.trial_device("cuda")


def test_trial_config_is_base_plus_overrides_and_validated():
    base = TrainConfig(backbone="test_resnet").to_dict()
    cfg = te._trial_config({"lr": 0.01, "stage2_epoch": 3}, base)
    assert (cfg.lr, cfg.stage2_epoch, cfg.backbone, cfg.epochs) == (0.01, 3, "test_resnet", 50)
    with pytest.raises(UserError):
        te._trial_config({"stage2_epoch": 9, "stage3_epoch": 8}, base)


@pytest.fixture
def fake_tune(monkeypatch, tmp_path):
    reports, context = [], SimpleNamespace(get_trial_dir=lambda: str(tmp_path / "trial"),
                                           get_trial_id=lambda: "t0001")
    (tmp_path / "trial").mkdir()

    def report(metrics, checkpoint=None):
        with checkpoint.as_directory() as directory:
            saved = torch.load(Path(directory) / te.CHECKPOINT_FILE, weights_only=True)
        reports.append((metrics, saved))

    monkeypatch.setattr(te.tune, "report", report)
    monkeypatch.setattr(te.tune, "get_context", lambda: context)
    monkeypatch.setattr(te.tune, "get_checkpoint", lambda: None)
    FakeRay().install(monkeypatch)
    return SimpleNamespace(reports=reports, trial_dir=tmp_path / "trial")


def fake_fit(epochs, diverge_at=None):
    def fit(cfg, data, state=None, device=None):
        for epoch in range(1, epochs + 1):
            if epoch == diverge_at:
                raise DivergedError(f"loss became non-finite at epoch {epoch}")
            yield SimpleNamespace(epoch=epoch, metrics={**METRICS, "epoch": epoch, "note": "text"},
                                  state={"format": "x", "epoch": epoch, "weights": torch.ones(2) * epoch})
    return fit


def test_reports_every_epoch_with_its_checkpoint(monkeypatch, fake_tune):
    monkeypatch.setattr(trainable.train.loop, "fit", fake_fit(3))
    te.train_trial({"lr": 0.01}, data=object(), base=TrainConfig().to_dict())
    assert [m["epoch"] for m, _ in fake_tune.reports] == [1, 2, 3]
    metrics, saved = fake_tune.reports[-1]
    assert list(metrics)[:len(te.REPORTED)] == list(te.REPORTED)  # the live table shows these first
    assert "note" not in metrics and metrics["epoch_time_s"] == 0.5
    assert saved["epoch"] == 3 and torch.equal(saved["weights"], torch.full((2,), 3.0))


def test_divergence_ends_the_trial_as_a_diverged_error_and_a_retry_does_not_train(monkeypatch, fake_tune):
    monkeypatch.setattr(trainable.train.loop, "fit", fake_fit(3, diverge_at=2))
    with pytest.raises(te.TrialDiverged, match="^diverged: loss became non-finite at epoch 2"):
        te.train_trial({}, data=object(), base=TrainConfig().to_dict())
    assert len(fake_tune.reports) == 1
    monkeypatch.setattr(trainable.train.loop, "fit", lambda *a, **k: pytest.fail("a diverged trial was retrained"))
    with pytest.raises(te.TrialDiverged, match="^diverged:"):
        te.train_trial({}, data=object(), base=TrainConfig().to_dict())


def test_missing_data_is_a_clear_error():
    with pytest.raises(ValueError, match="with_parameters"):
        te.train_trial({})


def test_injected_faults_fire_once_where_armed_and_leave_the_trainable_as_it_was(monkeypatch, fake_tune, tmp_path):
    """What the fault tests rely on: an armed fault fires once, in the first run to reach its
    epoch, around the real report; an empty plan changes nothing; the real report is put back."""
    monkeypatch.setattr(trainable.train.loop, "fit", fake_fit(3))
    real_report = te._report

    def trial(config):
        te.train_trial(config, data=object(), base=TrainConfig().to_dict())

    faults, quiet = tmp_path / "faults", tmp_path / "quiet"
    faults.mkdir(), quiet.mkdir()
    plan = {"dir": str(faults), "fail_once_at_epoch": 2, "pause_once_after_epoch": [1, 0],
            "hold_once_before_report": [3, 0]}
    with pytest.raises(RuntimeError, match="^injected test fault at epoch 2$"):
        run_with_faults(trial, {}, plan)
    assert [m["epoch"] for m, _ in fake_tune.reports] == [1]  # epoch 2 trained, not reported
    assert te._report is real_report
    assert sorted(p.name for p in faults.iterdir()) == ["paused", "raised"]
    assert (faults / "raised").read_text() == "t0001\n"

    run_with_faults(trial, {}, plan)  # the retry: failure and pause are spent, the hold fires at epoch 3
    assert [m["epoch"] for m, _ in fake_tune.reports] == [1, 1, 2, 3]
    assert sorted(p.name for p in faults.iterdir()) == ["held", "held_pid", "paused", "raised"]
    assert int((faults / "held_pid").read_text()) == os.getpid()
    assert te._report is real_report

    run_with_faults(trial, {}, {"dir": str(quiet)})  # nothing armed: the real trial's reports, no marker
    assert [m["epoch"] for m, _ in fake_tune.reports[4:]] == [1, 2, 3] and not any(quiet.iterdir())
    assert te._report is real_report
