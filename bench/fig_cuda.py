"""G1/G2 (CUDA only): resnet50 at 224 px, AMP + channels_last, under a trial vs a bare timm loop.

- trial: a one-trial search through `tuner.search.run_search` with --gpus-per-trial 1 (the real
  trainable: fit() with AMP, channels_last, pinned copies and GPU augmentation) of the space
  `bench.fig_cuda:fixed_space` (the base config, nothing searched), stage 3 from epoch 2, on the
  demo images decoded at 224 px and listed several times; images/s is fit()'s
  `train_images_per_s`, median over epochs 2..;
- bare: timm resnet50 + AdamW + GradScaler + autocast(fp16), channels_last, on a random batch
  resident on the GPU (no input pipeline: the ceiling), with cudnn.benchmark and with
  cudnn.deterministic (what fit() sets).

G2 is fit()'s `data_wait_frac` on the GPU, median over epochs 2.. . Sized by the mode's `cuda`
profile (images per epoch, epochs, bare steps) to fit one device call.
"""

from __future__ import annotations

import os
import time

from bench.datasets import bench_dataset, config_flags
from bench.processes import ensure_ray, run_search_inprocess, say
from bench.profiles import Context
from bench.rows import FigureResult, fmt, median

MODEL, SIZE, BATCH = "resnet50", 224, 64


def fixed_space(trial, base) -> dict:
    """A search space with nothing to search: the trial is the base config."""
    return {}


def available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def bare_timm(*, steps: int, benchmark: bool, device: str = "cuda", model: str = MODEL, size: int = SIZE,
              batch: int = BATCH, warmup: int = 10) -> dict:
    import timm
    import torch
    import torch.nn.functional as F

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = not benchmark
    net = timm.create_model(model, pretrained=False, num_classes=61).to(dev)
    layout = torch.channels_last if cuda else torch.contiguous_format
    net = net.to(memory_format=layout).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=5e-4, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=cuda)
    images = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=layout)
    labels = torch.randint(0, 61, (batch,), device=dev)

    def step():
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=cuda):
            loss = F.cross_entropy(net(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(dev)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - started
    return {"images_per_s": steps * batch / seconds, "steps": steps, "batch": batch, "seconds": seconds,
            "cudnn_benchmark": benchmark}


def trial_flags(ctx: Context, images: int, epochs: int, device_flags: list[str], *, model: str = MODEL,
                size: int = SIZE, batch: int = BATCH) -> list[str]:
    from bench.datasets import demo_root
    from trainable.data.demo.dataset import layout_paths

    train_count = sum(1 for _ in open(layout_paths(demo_root())["train_meta"])) - 1
    repeat = max(1, -(-images // train_count))
    paths = bench_dataset({"fraction": 1.0, "val_per_class": 10, "repeat": repeat})
    cpus = os.cpu_count() or 1
    return config_flags(paths, (size, size), epochs) + [
        "--backbone", model, "--no-pretrained", "--batch-size", str(batch), "--stage2-epoch", "0",
        "--stage3-epoch", "1", "--num-workers", "0", "--space", "bench.fig_cuda:fixed_space",
        "--num-samples", "1", "--grace-period", str(epochs), "--max-concurrent", "1",
        "--cpus-per-trial", str(min(8, cpus)), *device_flags,
        "--storage-path", str(ctx.storage)]


def trial_results(ctx: Context, images: int, epochs: int, device_flags: list[str], **model) -> list[dict]:
    """The per-epoch results of the one-trial search (fit() under Tune) on `images` per epoch."""
    name = f"g1-{ctx.run_id}"
    flags = trial_flags(ctx, images, epochs, device_flags, **model) + ["--name", name]
    ensure_ray(ctx.log("ray"))
    summary = run_search_inprocess(flags, ctx.log(name))
    (rows,) = summary["trial_results"].values()
    return rows


def run(ctx: Context) -> FigureResult:
    prof = ctx.profile["cuda"]
    fig = FigureResult("G1", f"{MODEL} {SIZE} px AMP + channels_last: trial vs bare timm")
    if not available():
        fig.add("trial / bare timm training images/s", "n/a (no CUDA device)", "≥ 0.9×", None)
        return fig
    import torch

    say(f"G1: {MODEL} trial on the GPU, {prof['epochs']} epochs of ~{prof['images']} images")
    rows = trial_results(ctx, prof["images"], prof["epochs"], ["--gpus-per-trial", "1"])
    trial_ips = median([r["train_images_per_s"] for r in rows[1:]])
    wait = median([r["data_wait_frac"] for r in rows[1:]])
    say("G1: bare timm loop (cudnn.benchmark, then deterministic)")
    fast = bare_timm(steps=prof["bare_steps"], benchmark=True)
    exact = bare_timm(steps=prof["bare_steps"], benchmark=False)
    ratio = trial_ips / fast["images_per_s"]
    fig.raw = {"trial_results": rows, "bare_benchmark": fast, "bare_deterministic": exact,
               "device": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d")}
    fig.sizing = {"model": MODEL, "size": SIZE, "batch": BATCH, "epochs": prof["epochs"], "images": prof["images"]}
    fig.add(f"training images/s, trial / bare timm loop (cudnn.benchmark), {torch.cuda.get_device_name(0)}",
            f"{ratio:.2f}× ({fmt(trial_ips)} vs {fmt(fast['images_per_s'])} img/s)", "≥ 0.9×", ratio >= 0.9)
    fig.add("  bare timm loop with cudnn.deterministic (as fit() sets)", f"{fmt(exact['images_per_s'])} img/s",
            note=f"trial / this = {trial_ips / exact['images_per_s']:.2f}×")
    outside = median([r["time_this_iter_s"] - r["epoch_time_s"] for r in rows[1:]])
    fig.add("  Tune's time per epoch outside fit() (checkpoint of model + optimizer, report)",
            f"{outside:.2f} s per epoch of {fmt(median([r['epoch_time_s'] for r in rows[1:]]))} s")
    fig.add("data wait in fit() on the GPU (median over epochs 2..)", f"{100 * wait:.2f} %", "< 5 %",
            wait < 0.05).id = "G2"
    return fig
