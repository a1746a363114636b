"""How much of the machine (or cluster) each trial gets, and how many run at once.

Defaults by what is there:
- CUDA GPUs: one GPU per trial (`--gpus-per-trial 0.5` packs two trials per GPU); the CPUs
  are shared out between the trials that fit on the GPUs.
- Apple MPS: Ray 2.60 reports an Apple GPU as `GPU: 1` but cannot isolate it, so trials ask
  for a custom resource `mps` (1 per trial unless `--gpus-per-trial` says otherwise), which
  serialises them on the one device; the trial sees the resource and trains on MPS.
- CPU only: concurrency = CPUs / `--cpus-per-trial`; by default the CPUs are split so that
  up to four trials run at once (more parallel trials make TPE's proposals blinder).

The plan is computed from the resources Ray actually has (`ray.cluster_resources()`), so the
same rules hold on an attached cluster. Nothing here imports Ray or torch at import time.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from trainable._compat import recorded_ray_address
from trainable.errors import UserError

MPS_RESOURCE = "mps"
DEFAULT_CPU_CONCURRENCY = 4


@dataclass(frozen=True)
class Hardware:
    cpus: float
    gpus: float            # CUDA GPUs (an Apple GPU is reported through `mps`, not here)
    mps: float = 0.0       # units of the custom `mps` resource
    where: str = "this machine"


@dataclass(frozen=True)
class ResourcePlan:
    per_trial: dict        # for tune.with_resources: {"cpu": c, "gpu": g} (+ {"mps": m})
    max_concurrent: int
    accelerator: str       # "cuda" | "mps" | "cpu": what the trials will train on
    hardware: Hardware

    def describe(self) -> str:
        hw = self.hardware
        have = f"{hw.cpus:g} CPUs"
        if hw.gpus:
            have += f", {hw.gpus:g} CUDA GPUs"
        if hw.mps:
            have += ", Apple MPS"
        ask = ", ".join(f"{value:g} {name.upper() if name != MPS_RESOURCE else 'MPS'}"
                        for name, value in self.per_trial.items() if value)
        return (f"resources: {have} on {hw.where}; each trial gets {ask} and trains on "
                f"{self.accelerator}; up to {self.max_concurrent} trial(s) at once")


def local_mps_available() -> bool:
    """Apple MPS on this machine (imports torch; call only after argument parsing)."""
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def hardware_from_ray(resources: dict, where: str) -> Hardware:
    """Hardware as Ray sees it (`ray.cluster_resources()`)."""
    mps = float(resources.get(MPS_RESOURCE, 0.0))
    gpus = 0.0 if mps else float(resources.get("GPU", 0.0))  # an Apple GPU also shows as GPU: 1
    return Hardware(cpus=float(resources.get("CPU", os.cpu_count() or 1)), gpus=gpus, mps=mps, where=where)


def plan_resources(hw: Hardware, *, cpus_per_trial: float | None = None, gpus_per_trial: float | None = None,
                   max_concurrent: int | None = None, device: str = "auto", num_samples: int = 1) -> ResourcePlan:
    """The per-trial request and concurrency for `hw`; UserError when the request cannot fit."""
    for name, value in (("--cpus-per-trial", cpus_per_trial), ("--gpus-per-trial", gpus_per_trial)):
        if value is not None and value < 0:
            raise UserError(f"{name} {value:g}: must not be negative")
    if cpus_per_trial is not None and cpus_per_trial > hw.cpus:
        raise UserError(f"--cpus-per-trial {cpus_per_trial:g}: {hw.where} has only {hw.cpus:g} CPUs")
    if max_concurrent is not None and max_concurrent < 1:
        raise UserError(f"--max-concurrent {max_concurrent}: must be at least 1")

    accelerator = _accelerator(hw, device, gpus_per_trial)
    if accelerator == "cpu":
        cpu = cpus_per_trial if cpus_per_trial is not None else max(
            1.0, float(math.floor(hw.cpus / DEFAULT_CPU_CONCURRENCY)))
        per_trial = {"cpu": cpu, "gpu": 0.0}
        fits = math.floor(hw.cpus / cpu + 1e-9) if cpu else num_samples
        if cpus_per_trial is None:
            fits = min(fits, DEFAULT_CPU_CONCURRENCY)
    else:
        units = hw.gpus if accelerator == "cuda" else hw.mps
        unit = gpus_per_trial if gpus_per_trial else 1.0
        if unit > units and unit > 1:
            raise UserError(f"--gpus-per-trial {unit:g}: {hw.where} has only {units:g} GPU(s)")
        unit = min(unit, units)
        fits_device = max(1, math.floor(units / unit + 1e-9))
        cpu = cpus_per_trial if cpus_per_trial is not None else max(1.0, float(math.floor(hw.cpus / fits_device)))
        key = "gpu" if accelerator == "cuda" else MPS_RESOURCE
        per_trial = {"cpu": cpu, "gpu": 0.0, key: unit}
        fits = min(fits_device, math.floor(hw.cpus / cpu) if cpu else fits_device)
    fits = max(1, fits)
    concurrent = max_concurrent if max_concurrent is not None else min(fits, max(1, num_samples))
    return ResourcePlan(per_trial=per_trial, max_concurrent=int(concurrent), accelerator=accelerator, hardware=hw)


def _accelerator(hw: Hardware, device: str, gpus_per_trial: float | None) -> str:
    if device == "cpu" or gpus_per_trial == 0:
        return "cpu"
    if device == "cuda" and not hw.gpus:
        raise UserError(f"--device cuda: {hw.where} has no CUDA GPU; use --device auto or cpu")
    if device == "mps" and not hw.mps:
        raise UserError(f"--device mps: {hw.where} has no Apple MPS device; use --device auto or cpu")
    if hw.gpus and device in ("auto", "cuda"):
        return "cuda"
    if hw.mps and device in ("auto", "mps"):
        return "mps"
    if gpus_per_trial:
        raise UserError(f"--gpus-per-trial {gpus_per_trial:g}: {hw.where} has no GPU; drop the flag "
                        f"or use --address to attach to a cluster with GPUs")
    return "cpu"


# ray.init retries an unreachable cluster for minutes; a cluster's head answers a TCP connect at once
ADDRESS_PROBE_TIMEOUT_S = 15.0


def probe_address(address: str, timeout_s: float = ADDRESS_PROBE_TIMEOUT_S) -> None:
    """UserError unless something accepts a TCP connection at the cluster's address: ray.init
    retries an address where nothing listens for minutes ("Failed to connect to GCS")."""
    import socket

    target = address.removeprefix("ray://")
    if address == "auto":  # the address `ray start` recorded on this machine (or RAY_ADDRESS)
        target = recorded_ray_address()
        if target is None:  # nothing recorded (ray.init says so at once), or RAY_ADDRESS=local
            return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        reason = f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError) else (
            getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
        shown = address if target == address.removeprefix("ray://") else f"{address} ({target})"
        raise UserError(f"--address {shown}: no Ray cluster listens there ({reason}); start one with "
                        f"`ray start --head` or fix the address") from None
