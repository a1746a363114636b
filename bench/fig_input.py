"""P2: training-input throughput, decode-once cache + batched augmentation vs a seed-style pipeline.

Both pipelines read the same image files, produce the same output size and apply the same
augmentation (trainable.train.augment's crop, flips, colour jitter and normalisation):

- croptune: the split decoded once into the cache (trainable.data.dataset.load_data), then per
  batch the loop's own `_gather` and `augment.train_augment`;
- seed-style: PIL decode + the torchvision transforms per sample, in a DataLoader with
  SEED_WORKERS worker processes.

Measures images/s in steady state over shuffled passes of at least MIN_BATCHES batches (the file
list repeated when shorter): croptune's from the end of its first batch, the DataLoader's once
each worker has delivered a batch (the ratio counted from the first batch is in results.json
too). The pipelines run interleaved ROUNDS times; the row is the median per-round ratio. Also:
the one-time cold decode into a throw-away cache, each side's CPU time per image, and fit()'s
own `data_wait_frac` with the augmentation's share of the step. Sized by the mode's `input`
profile (images, batch, the 384 px JPEG set); bench/README.md has the method and the numbers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.datasets import bench_dataset, train_config
from bench.processes import say
from bench.profiles import Context
from bench.rows import FigureResult, fmt, fmt_s, median

SEED_WORKERS = 2
MIN_BATCHES = 24   # per timed pass: enough that the pipelines' fill and drain are a small part
# Both pipelines can use every core (the seed-style through its worker processes), so on the
# CPU the wall-time ratio is near this one when both scale; it is measured in-process, without
# the DataLoader's transport between processes, so it understates the seed-style's real cost.
CEILING = ("≈ the CPU's ceiling for the throughput ratio: both pipelines can use all cores "
           "(in-process: the seed-style's DataLoader transport is not counted)")
ROUNDS = 3         # interleaved ours / ours with 1 thread / seed-style rounds (1 with --quick)


def run(ctx: Context) -> FigureResult:
    prof = ctx.profile["input"]
    fig = FigureResult("P2", "training-input throughput")
    paths = bench_dataset(None)  # the demo data: the images users' demo runs read
    cfg = train_config(paths, None)
    demo = _compare(ctx, fig, cfg, prof["images"], prof["batch"], label="demo")
    fig.add(f"input images/s, decode-once+batched aug / seed-style DataLoader({SEED_WORKERS} workers), "
            f"demo {cfg.image_size} px",
            f"{fmt(demo['ratio'])}x ({fmt(demo['ours_ips'])} vs {fmt(demo['seed_ips'])} img/s)", "≥ 10×",
            demo["ratio"] >= 10, note=_spread(demo))
    fig.add(f"  croptune pipeline with 1 torch thread instead of {demo['torch_threads']}",
            f"{fmt(demo['ours_1_thread_ips'])} img/s ({fmt(demo['ratio_1_thread'])}x the seed-style)")
    fig.add("  CPU time per image, seed-style / croptune (1 thread each, in-process; load-insensitive)",
            _cpu_text(demo), note=CEILING)
    if demo["ours_cuda"]:
        fig.add("  croptune pipeline with the augmentation on the GPU",
                f"{fmt(demo['ours_cuda']['steady_ips'])} img/s "
                f"({fmt(demo['ours_cuda']['steady_ips'] / demo['seed_ips'])}x the seed-style)", "≥ 10×",
                demo["ours_cuda"]["steady_ips"] / demo["seed_ips"] >= 10)
    if prof["jpeg_images"]:
        big = _jpeg_variant(ctx, fig, prof["jpeg_images"], prof["batch"])
        fig.add("same, seed-sized: 384 px JPEG files -> 224 px (cache 256)",
                f"{fmt(big['ratio'])}x ({fmt(big['ours_ips'])} vs {fmt(big['seed_ips'])} img/s)", "≥ 10×",
                big["ratio"] >= 10,
                note=f"{_spread(big)}; 1 torch thread: {fmt(big['ratio_1_thread'])}x"
                + (f"; GPU: {fmt(big['ours_cuda']['steady_ips'] / big['seed_ips'])}x" if big["ours_cuda"] else ""))
        fig.add("  CPU time per image, seed-style / croptune, seed-sized (as above)", _cpu_text(big), note=CEILING)
    cold = _cold_decode(cfg)
    fig.raw["cold_decode"] = cold
    fig.add("one-time decode of the demo data into the cache (cold)",
            f"{fmt_s(cold['seconds'])} for {cold['images']} images ({fmt(cold['images_per_s'])} img/s)")
    wait = _loop_wait(ctx, fig)
    if wait is not None:
        fig.add("data wait in fit(): time fetching batches / train step time (median over epochs)",
                f"{100 * wait['data_wait_frac']:.2f} %", "< 5 %", wait["data_wait_frac"] < 0.05)
        fig.add("  + batched augmentation (in the step, same device) / train step time",
                f"{100 * wait['augment_frac']:.1f} %", "", None,
                note="input work on the critical path; not counted in data_wait_frac")
    return fig


def _cpu_text(result: dict) -> str:
    cost = result["cpu_cost"]
    return (f"{fmt(cost['ratio'])}x ({1000 * median(cost['seed_s_per_image']):.2f} vs "
            f"{1000 * median(cost['ours_s_per_image']):.3f} ms, median of {len(cost['ours_s_per_image'])} batches)")


def _spread(result: dict) -> str:
    ratios = result["ratio_per_round"]
    return f"median of {len(ratios)} interleaved rounds: " + ", ".join(f"{fmt(r)}x" for r in ratios)


# ---------------------------------------------------------------------------------- pipelines
def _compare(ctx: Context, fig: FigureResult, cfg, images: int | None, batch: int, label: str) -> dict:
    from trainable.data.dataset import load_data

    data = load_data(cfg, progress=False)
    split = data.train
    count = len(split) if images is None else min(images, len(split))
    files = [os.path.join(cfg.train_dir, p) for p in split.paths]
    size = cfg.image_size
    passes = -(-MIN_BATCHES * batch // count)  # repeat the images to reach MIN_BATCHES batches
    rounds = 1 if ctx.mode == "quick" else ROUNDS
    import torch

    threads = torch.get_num_threads()
    say(f"P2 {label}: {rounds} interleaved rounds of croptune ({threads} and 1 torch threads) and the seed-style "
        f"DataLoader ({SEED_WORKERS} workers), {count} images x {passes} at {size} px")
    ours, ours_1t, seed = [], [], []
    for r in range(rounds):
        steps = [lambda: ours.append(_ours(split, count, size, batch, passes)),
                 lambda: ours_1t.append(_one_thread(lambda: _ours(split, count, size, batch, passes))),
                 lambda: seed.append(_seed_style(files[:count] * passes, split.labels[:count], size, batch))]
        for step in steps if r % 2 == 0 else steps[::-1]:
            step()
    cpu = _cpu_cost(split, files[:count], size, batch, 4 * rounds)
    if torch.cuda.is_available():  # where the batched augmentation is meant to run
        result_cuda = _ours(split, count, size, batch, passes, device="cuda")
    else:
        result_cuda = None
    ratios = [o["steady_ips"] / s["steady_ips"] for o, s in zip(ours, seed, strict=True)]
    ours_ips, ours_1t_ips = median([o["steady_ips"] for o in ours]), median([o["steady_ips"] for o in ours_1t])
    seed_ips = median([s["steady_ips"] for s in seed])
    result = {"images": count, "passes": passes, "rounds": rounds, "size": size,
              "cache_size": int(split.images.shape[1]), "batch": batch, "torch_threads": threads,
              "ours": ours, "ours_1_thread": ours_1t, "ours_cuda": result_cuda, "seed": seed,
              "ours_ips": ours_ips, "ours_1_thread_ips": ours_1t_ips, "seed_ips": seed_ips,
              "ratio_per_round": ratios, "ratio": median(ratios),
              "ratio_1_thread": median([o["steady_ips"] / s["steady_ips"] for o, s in zip(ours_1t, seed, strict=True)]),
              "ratio_with_startup": median([o["total_ips"] / s["total_ips"] for o, s in zip(ours, seed, strict=True)]),
              "cpu_cost": cpu}
    fig.raw[label] = result
    fig.sizing[label] = {"images": count, "passes": passes, "rounds": rounds, "size": size, "batch": batch,
                         "files": cfg.train_dir}
    return result


def _cpu_cost(split, files: list[str], size: int, batch: int, batches: int) -> dict:
    """Load-insensitive: this thread's CPU time per image for one batch of each pipeline's work,
    in this process with one torch thread, interleaved. Seed-style: PIL decode + transform +
    collate (no DataLoader transport: that only adds to its cost); croptune: _gather +
    train_augment. Thread CPU time does not count the time other processes hold the cores."""
    import torch
    from torch.utils.data import default_collate

    from trainable.train.augment import train_augment
    from trainable.train.loop import _gather

    dataset = _SeedDataset(files, split.labels, seed_transform(size))
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    seed, ours, out = [], [], None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the DataLoader's workers; and no augmentation threads
    try:
        for _ in range(batches):
            index = np.sort(rng.choice(len(files), min(batch, len(files)), replace=False))
            t0 = time.thread_time()
            default_collate([dataset[i] for i in index])
            t1 = time.thread_time()
            out = train_augment(_gather(split, index, torch.device("cpu"))[0], size, light=False, generator=generator)
            t2 = time.thread_time()
            seed.append((t1 - t0) / len(index))
            ours.append((t2 - t1) / len(index))
    finally:
        torch.set_num_threads(threads)
    del out
    return {"seed_s_per_image": seed, "ours_s_per_image": ours,
            "ratio": median([s / o for s, o in zip(seed, ours, strict=True)])}


def _one_thread(run):
    """The croptune pipeline with one intra-op torch thread (and so no augmentation threads)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run()
    finally:
        torch.set_num_threads(threads)


def _ours(split, count: int, size: int, batch: int, passes: int = 1, device: str = "cpu") -> dict:
    import torch

    from trainable.train.augment import train_augment
    from trainable.train.loop import _gather
    from trainable.train.sampler import epoch_order

    generator = torch.Generator().manual_seed(0)
    order = np.concatenate([epoch_order(split.labels[:count], False, generator).numpy() for _ in range(passes)])
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    device = torch.device(device)
    gather_s = augment_s = 0.0
    started = time.perf_counter()
    first_done = None
    out = None  # like the loop, the previous batch is alive while the next one is made
    for index in batches:
        t0 = time.perf_counter()
        images, _ = _gather(split, index, device)
        t1 = time.perf_counter()
        out = train_augment(images, size, light=False, generator=generator)
        float(out[0, 0, 0, 0])  # make sure the work happened
        t2 = time.perf_counter()
        gather_s += t1 - t0
        augment_s += t2 - t1
        if first_done is None:
            first_done = t2
    ended = time.perf_counter()
    total = len(order)
    steady = total - len(batches[0])
    return {"total_ips": total / (ended - started),
            "steady_ips": steady / (ended - first_done) if steady else total / (ended - started),
            "gather_s": gather_s, "augment_s": augment_s, "augment_s_per_image": augment_s / total}


class _SeedDataset:
    """The seed's dataset: a path list, PIL decode and a torchvision transform per sample."""

    def __init__(self, files, labels, transform):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as image:
            return self.transform(image.convert("RGB")), int(self.labels[i])


def seed_transform(size: int):
    from torchvision import transforms as T

    from trainable.train.augment import CROP_RATIO, FULL_SCALE, IMAGENET_MEAN, IMAGENET_STD, JITTER

    return T.Compose([
        T.RandomResizedCrop(size, scale=FULL_SCALE, ratio=CROP_RATIO),
        T.RandomHorizontalFlip(), T.RandomVerticalFlip(),
        T.ColorJitter(brightness=JITTER, contrast=JITTER, saturation=JITTER),
        T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _seed_style(files: list[str], labels: np.ndarray, size: int, batch: int, workers: int = SEED_WORKERS) -> dict:
    """files may repeat the image list (labels then repeat with it)."""
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    labels = np.resize(np.asarray(labels), len(files))
    loader = DataLoader(_SeedDataset(files, labels, seed_transform(size)), batch_size=batch, shuffle=True,
                        num_workers=workers)
    started = time.perf_counter()
    arrivals, seen = [], []
    for images, _ in loader:
        arrivals.append(time.perf_counter())
        seen.append(len(images))
    ended = arrivals[-1]
    skip = min(workers, len(arrivals) - 1)  # steady state: once every worker has delivered a batch
    steady = sum(seen[skip:])
    return {"total_ips": sum(seen) / (ended - started),
            "steady_ips": steady / (ended - arrivals[skip - 1]) if skip else sum(seen) / (ended - started),
            "first_batch_ips": sum(seen[1:]) / (ended - arrivals[0]) if len(seen) > 1 else None,
            "startup_s": arrivals[0] - started, "batches": len(seen)}


# ---------------------------------------------------------------------------------- variants
def _jpeg_variant(ctx: Context, fig: FigureResult, count: int, batch: int) -> dict:
    """Seed-sized inputs: 384 px JPEG photos (demo leaves upscaled, with sensor-like noise)."""
    from trainable.config import TrainConfig
    from trainable.data.demo.dataset import layout_paths

    root = _jpeg_dataset(count)
    paths = layout_paths(root)
    # num_workers=0: load_data with workers > 0 and a warm cache fails (Pool(0) in image_cache._results).
    cfg = TrainConfig(**paths, image_size=224, progressive_image_size=256, num_workers=0)
    return _compare(ctx, fig, cfg, count, batch, label="jpeg224")


def _jpeg_dataset(count: int) -> Path:
    from PIL import Image

    from bench.datasets import demo_root
    from bench.profiles import WORK
    from trainable.data.demo.dataset import layout_paths
    from trainable.data.metadata import write_csv_atomic

    root = WORK / "data" / f"jpeg384-{count}"
    paths = layout_paths(root)
    if Path(paths["class_weights"]).is_file():
        return root
    source = layout_paths(demo_root())
    import csv

    with open(source["train_meta"], newline="") as handle:
        rows = list(csv.reader(handle))
    header, rows = rows[0], rows[1:count + 1]
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        Path(paths[f"{split}_dir"]).mkdir(parents=True, exist_ok=True)
    for row in rows:
        with Image.open(os.path.join(source["train_dir"], row[0])) as image:
            big = np.asarray(image.convert("RGB").resize((384, 384), Image.Resampling.BICUBIC), dtype=np.float32)
        noisy = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)
        name = Path(row[0]).with_suffix(".jpg").name
        for split in ("train", "val"):
            Image.fromarray(noisy).save(os.path.join(paths[f"{split}_dir"], name), quality=90)
        row[0] = name
    write_csv_atomic(Path(paths["train_meta"]), header, rows)
    write_csv_atomic(Path(paths["val_meta"]), header, rows[:8])
    write_csv_atomic(Path(paths["class_weights"]), ["label_61", "weight"], [[i, "1.0"] for i in range(61)])
    return root


def _cold_decode(cfg) -> dict:
    """load_data into an empty cache dir: the decode a first run pays once."""
    from trainable.data.dataset import load_data

    tmp = tempfile.mkdtemp(prefix="croptune-bench-cache-")
    saved = os.environ.get("CROPTUNE_CACHE_DIR")
    os.environ["CROPTUNE_CACHE_DIR"] = tmp
    try:
        say(f"P2: cold decode of the demo data (num_workers={cfg.num_workers})")
        started = time.perf_counter()
        data = load_data(cfg, progress=False)
        seconds = time.perf_counter() - started
        images = len(data.train) + len(data.val)
    finally:
        if saved is None:
            os.environ.pop("CROPTUNE_CACHE_DIR", None)
        else:
            os.environ["CROPTUNE_CACHE_DIR"] = saved
        shutil.rmtree(tmp, ignore_errors=True)
    return {"seconds": seconds, "images": images, "images_per_s": images / seconds,
            "num_workers": cfg.num_workers}


def _loop_wait(ctx: Context, fig: FigureResult) -> dict | None:
    """data_wait_frac from the bare fit() runs (shared with P1), plus the augmentation's share."""
    from bench.fig_loop import bare_runs, loop_setup

    runs = bare_runs(ctx)
    epochs = [m for run in runs for m in run["metrics"]]
    if not epochs:
        return None
    cfg, data = loop_setup(ctx)
    import torch

    from trainable.train.augment import train_augment

    generator = torch.Generator().manual_seed(1)
    batch = torch.from_numpy(np.array(data.train.images[:cfg.batch_size]))  # a writable copy
    train_augment(batch, cfg.image_size, light=False, generator=generator)  # warm-up
    t0 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        train_augment(batch, cfg.image_size, light=False, generator=generator)
    augment_s_per_image = (time.perf_counter() - t0) / (reps * len(batch))
    ips = median([m["train_images_per_s"] for m in epochs])
    result = {"data_wait_frac": median([m["data_wait_frac"] for m in epochs]),
              "data_wait_per_epoch": [m["data_wait_frac"] for m in epochs],
              "augment_s_per_image": augment_s_per_image, "train_images_per_s": ips,
              "augment_frac": augment_s_per_image * ips}
    fig.raw["loop_wait"] = result
    return result
