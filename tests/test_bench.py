"""Smoke tests of the benchmark's code paths at toy sizes (no Ray search, no timing asserted).

The figures themselves are benchmarks (`python -m bench`), never tests: nothing here depends
on the machine's speed.
"""

import os
import time

import numpy as np
import pytest

import bench.common as common
from bench import fig_cuda, fig_demo, fig_input, fig_search
from bench.common import FigureResult, Row
from bench.run import build_parser, select, table
from trainable.demo_data import layout_paths, write_synthetic_dataset


@pytest.fixture
def tiny_demo(tmp_path, monkeypatch):
    """A tiny synthetic dataset standing in for the demo data; bench work files under tmp_path."""
    root = write_synthetic_dataset(tmp_path / "demo", seed=0, max_per_class=4, min_per_class=1, val_per_class=1,
                                   image_size=24)
    monkeypatch.setattr(common, "demo_root", lambda: root)
    monkeypatch.setattr(common, "WORK", tmp_path / "work")
    return root


def test_cli_selects_figures_and_rejects_unknown_ids():
    assert select("p2,P1,G2") == ["P2", "P1", "G1"]  # run order, G2 is part of G1
    assert "G1" not in select(None) or fig_cuda.available()
    with pytest.raises(SystemExit):
        select("P9")
    args = build_parser().parse_args(["--quick", "--only", "P1"])
    assert args.quick and args.only == "P1"


def test_demo_figure_runs_the_user_command_and_reads_its_checkpoint(tmp_path, monkeypatch, croptune_cache):
    """D1 runs `python -m trainable --demo` as a subprocess; here the demo dataset it finds in
    the cache is a tiny one, and --quick trains 2 epochs (a row without a verdict)."""
    from trainable.demo_data import DEMO_VERSION

    write_synthetic_dataset(croptune_cache / f"demo-{DEMO_VERSION}-seed0", seed=0, max_per_class=3,
                            min_per_class=1, val_per_class=1, image_size=24)
    monkeypatch.setattr(common, "WORK", tmp_path / "work")
    fig = fig_demo.run(common.Context("quick", "t"))
    assert fig.raw["epochs"] == 2 and 0.0 <= fig.raw["val_acc"] <= 100.0
    assert fig.rows[0].value == f"{fig.raw['val_acc']:.1f} %" and fig.rows[0].passed is None
    assert (tmp_path / "work" / "runs" / "t" / "d1-demo" / "last.pth").is_file()
    assert select("d1") == ["D1"]


def test_table_has_one_line_per_row_with_verdicts():
    fig = FigureResult("P2", "x")
    fig.add("ratio", "12x", "≥ 10×", True)
    fig.add("note", "1 %", "", None, note="why")
    text = table([fig, FigureResult("P1", "y", rows=[Row("P1", "wall", "1.01", "≤ 1.03", False)])])
    lines = text.splitlines()
    assert lines[0] == "| id | measure | value | goal | pass/fail |"
    assert lines[2].startswith("| P1 ") and lines[2].endswith("| FAIL |")  # table order: P1 first
    assert "| pass |" in lines[3] and "1 % (why)" in lines[4]


def test_bench_dataset_keeps_every_class_and_the_long_tail(tiny_demo):
    import csv

    full = common.bench_dataset(None)
    assert full == layout_paths(tiny_demo)
    subset = common.bench_dataset({"fraction": 0.5, "val_per_class": 1, "repeat": 2})
    with open(subset["train_meta"], newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    with open(full["train_meta"], newline="") as handle:
        all_rows = list(csv.reader(handle))[1:]
    labels = {row[1] for row in rows}
    assert labels == {row[1] for row in all_rows}            # at least one image of every class
    assert len(rows) < 2 * len(all_rows) and len(rows) % 2 == 0
    assert common.bench_dataset({"fraction": 0.5, "val_per_class": 1, "repeat": 2}) == subset  # reused


def test_input_pipelines_run_on_the_same_files(tiny_demo):
    from trainable.data import load_data

    cfg = common.train_config(common.bench_dataset(None), (16, 20))
    data = load_data(cfg, progress=False)
    ours = fig_input._ours(data.train, len(data.train), cfg.image_size, batch=8)
    files = [os.path.join(cfg.train_dir, p) for p in data.train.paths]
    seed = fig_input._seed_style(files[:16], data.train.labels[:16], cfg.image_size, batch=8, workers=0)
    assert ours["steady_ips"] > 0 and seed["steady_ips"] > 0
    image = fig_input.seed_transform(16)(__import__("PIL.Image").Image.new("RGB", (24, 24)))
    assert tuple(image.shape) == (3, 16, 16)


def test_memory_sampler_sees_this_process():
    if not common.MemorySampler.available():
        pytest.skip("needs Linux /proc")
    with common.MemorySampler(os.getpid(), interval=0.05) as sampler:
        time.sleep(0.2)
    assert sampler.peak_rss_kib > 0 and sampler.peak_pss_kib > 0 and sampler.peak_processes >= 1
    assert sum(sampler.breakdown_mib.values()) > 0


def test_fifo_arm_is_the_search_with_a_random_sampler(tmp_path, tiny_demo):
    from optuna.samplers import RandomSampler

    from tuner.cli import parse_settings
    from tuner.search import build_searcher

    flags = common.config_flags(common.bench_dataset(None), (16, 20), 3) + [
        "--space", "stage_epochs", "--num-samples", "2", "--storage-path", str(tmp_path / "r"), "--name", "x"]
    settings = parse_settings(flags)
    fifo, real = fig_search.random_searcher(settings), build_searcher(settings)
    assert isinstance(fifo._sampler, RandomSampler)
    assert type(fifo) is type(real) and fifo._points_to_evaluate == real._points_to_evaluate


def test_bare_timm_loop_runs_on_cpu():
    result = fig_cuda.bare_timm(steps=1, benchmark=False, device="cpu", model="test_resnet", size=32, batch=4,
                                warmup=1)
    assert result["images_per_s"] > 0
    assert fig_cuda.fixed_space(None, None) == {}


def test_gpu_trial_figure_runs_its_search_on_the_cpu(tiny_demo):
    """G1's trial half (a one-trial search of the fixed space on the demo images listed several
    times) on the CPU with a test model: its flags, dataset and result keys, before a GPU session
    depends on them."""
    train_images = sum(1 for _ in open(layout_paths(tiny_demo)["train_meta"])) - 1
    images = 2 * train_images + 1  # the train list repeated 3 times
    ctx = common.Context(mode="quick", run_id="g1")
    try:
        rows = fig_cuda.trial_results(ctx, images=images, epochs=2, device_flags=["--device", "cpu"],
                                      model="test_resnet", size=32, batch=16)
    finally:
        common.stop_ray()
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["time_this_iter_s"] >= row["epoch_time_s"] > 0 and 0 <= row["data_wait_frac"] < 1
        seen = row["train_images_per_s"] * row["train_time_s"]  # images trained in the epoch
        assert 3 * train_images - 1 <= round(seen) <= 3 * train_images  # fit() drops a last batch of 1


def test_stats_helpers():
    assert common.median([3.0, float("nan"), 1.0, 2.0]) == 2.0
    mean, std = common.mean_std([1.0, 3.0])
    assert mean == 2.0 and np.isclose(std, np.sqrt(2))
    assert common.fmt(float("nan")) == "n/a" and common.fmt_s(75) == "1 min 15 s"


def test_end_to_end_projection_uses_p1_p4_p6(tiny_demo):
    from bench import fig_cli

    ctx = common.Context(mode="default", run_id="t")
    fig = FigureResult("P6", "x")
    fig_cli.project_e2e(ctx, fig)
    assert not fig.rows  # nothing to project from yet
    ctx.shared.update({
        "demo_search": {"scaled": True, "epochs_consumed": 50},
        "p1": {"train_images": 10, "val_images": 5, "tune_time_this_iter_s": [9.0, 3.0, 3.0]},
        "p6_first": {"startup_s": 10.0},
    })
    fig_cli.project_e2e(ctx, fig)
    (row,) = fig.rows
    images = sum(1 for s in ("train", "val") for _ in open(layout_paths(tiny_demo)[f"{s}_meta"])) - 2
    assert fig.raw["e2e_projection"]["seconds"] == 10.0 + 50 * 3.0 * images / 15
    assert row.passed == (fig.raw["e2e_projection"]["seconds"] <= 600)


def test_ties_at_the_first_rung_are_counted():
    results = {"a": [{"epoch": 1, "macro_f1": 0.1}, {"epoch": 2, "macro_f1": 0.3}],
               "b": [{"epoch": 1, "macro_f1": 0.1}], "c": [{"epoch": 1, "macro_f1": 0.2}], "d": []}
    assert fig_search._tied(results, 1, "macro_f1") == 2
    assert fig_search._tied(results, 2, "macro_f1") == 0


def test_prefix_ties_fall_as_the_rung_moves_past_the_shared_epochs():
    from bench.prefix_ties import demo_base, tied_fractions

    base = demo_base(12)
    stage = tied_fractions("stage_epochs", base, trials=12, seed=0)
    assert len(stage) == 12 and stage[0] > 0.5  # epoch 0 (warmup, head only) is shared by nearly all
    assert all(later <= earlier for earlier, later in zip(stage, stage[1:], strict=False))
    assert stage[-1] < stage[0]
    assert tied_fractions("augmentation", base, trials=12, seed=0) == [0.0] * 12  # knobs differ from epoch 0
