"""The per-trial resource plan for CUDA, Apple MPS and CPU-only machines (no Ray needed)."""

import pytest

from trainable.errors import UserError
from tuner.resources import Hardware, hardware_from_ray, plan_resources


def test_cuda_one_gpu_per_trial_and_cpus_shared_out():
    plan = plan_resources(Hardware(cpus=16, gpus=4), num_samples=20)
    assert plan.accelerator == "cuda"
    assert plan.per_trial == {"cpu": 4.0, "gpu": 1.0}
    assert plan.max_concurrent == 4
    assert "4 CUDA GPUs" in plan.describe() and "up to 4 trial(s)" in plan.describe()


def test_cuda_fractional_gpus_pack_trials():
    plan = plan_resources(Hardware(cpus=16, gpus=2), gpus_per_trial=0.5, num_samples=20)
    assert plan.per_trial["gpu"] == 0.5 and plan.max_concurrent == 4 and plan.per_trial["cpu"] == 4.0


def test_apple_mps_is_a_custom_resource_that_serialises_trials():
    hw = hardware_from_ray({"CPU": 10.0, "GPU": 1.0, "mps": 1.0}, "this machine")  # Ray 2.60 on a Mac
    assert hw.gpus == 0 and hw.mps == 1
    plan = plan_resources(hw, num_samples=20)
    assert plan.accelerator == "mps"
    assert plan.per_trial == {"cpu": 10.0, "gpu": 0.0, "mps": 1.0}
    assert plan.max_concurrent == 1


def test_cpu_concurrency_is_cpus_over_cpus_per_trial():
    assert plan_resources(Hardware(cpus=8, gpus=0), cpus_per_trial=2, num_samples=20).max_concurrent == 4
    assert plan_resources(Hardware(cpus=8, gpus=0), cpus_per_trial=2, num_samples=3).max_concurrent == 3
    small = plan_resources(Hardware(cpus=2, gpus=0), num_samples=20)
    assert small.per_trial == {"cpu": 1.0, "gpu": 0.0} and small.max_concurrent == 2
    big = plan_resources(Hardware(cpus=64, gpus=0), num_samples=20)
    assert big.per_trial["cpu"] == 16.0 and big.max_concurrent == 4
    assert plan_resources(Hardware(cpus=8, gpus=0), max_concurrent=1, num_samples=20).max_concurrent == 1


def test_device_cpu_ignores_gpus_and_explicit_zero_gpus():
    assert plan_resources(Hardware(cpus=8, gpus=2), device="cpu").accelerator == "cpu"
    assert plan_resources(Hardware(cpus=8, gpus=2), gpus_per_trial=0).per_trial["gpu"] == 0.0


@pytest.mark.parametrize("kwargs, hw, message", [
    ({"device": "cuda"}, Hardware(cpus=4, gpus=0), "no CUDA GPU"),
    ({"gpus_per_trial": 1}, Hardware(cpus=4, gpus=0), "has no GPU"),
    ({"gpus_per_trial": 2}, Hardware(cpus=4, gpus=1), "only 1 GPU"),
    ({"cpus_per_trial": 8}, Hardware(cpus=4, gpus=0), "only 4 CPUs"),
    ({"max_concurrent": 0}, Hardware(cpus=4, gpus=0), "at least 1"),
])
def test_impossible_requests_are_user_errors(kwargs, hw, message):
    with pytest.raises(UserError, match=message):
        plan_resources(hw, **kwargs)
