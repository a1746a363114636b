"""Smoke tests of the benchmark's code paths at toy sizes (no Ray search, no timing asserted).

The figures themselves are benchmarks (`python -m bench`), never tests: nothing here depends
on the machine's speed.
"""

import os
import time

import numpy as np
import pytest

from bench import datasets, fig_cuda, fig_demo, fig_input, fig_search, processes, profiles
from bench.rows import FigureResult, Row, fmt, fmt_s, mean_std, median
from bench.run import build_parser, select, table
from trainable.data.demo.dataset import layout_paths, write_synthetic_dataset


@pytest.fixture
def tiny_demo(tmp_path, monkeypatch):
    """A tiny synthetic dataset standing in for the demo data; bench work files under tmp_path."""
    root = write_synthetic_dataset(tmp_path / "demo", seed=0, max_per_class=4, min_per_class=1, val_per_class=1,
                                   image_size=24)
    monkeypatch.setattr(datasets, "demo_root", lambda: root)
    monkeypatch.setattr(profiles, "WORK", tmp_path / "work")
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
    from trainable.data.demo.dataset import DEMO_VERSION

    write_synthetic_dataset(croptune_cache / f"demo-{DEMO_VERSION}-seed0", seed=0, max_per_class=3,
                            min_per_class=1, val_per_class=1, image_size=24)
    monkeypatch.setattr(profiles, "WORK", tmp_path / "work")
    fig = fig_demo.run(profiles.Context("quick", "t"))
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

    full = datasets.bench_dataset(None)
    assert full == layout_paths(tiny_demo)
    subset = datasets.bench_dataset({"fraction": 0.5, "val_per_class": 1, "repeat": 2})
    with open(subset["train_meta"], newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    with open(full["train_meta"], newline="") as handle:
        all_rows = list(csv.reader(handle))[1:]
    labels = {row[1] for row in rows}
    assert labels == {row[1] for row in all_rows}            # at least one image of every class
    assert len(rows) < 2 * len(all_rows) and len(rows) % 2 == 0
    assert datasets.bench_dataset({"fraction": 0.5, "val_per_class": 1, "repeat": 2}) == subset  # reused


def test_input_pipelines_run_on_the_same_files(tiny_demo):
    from trainable.data.dataset import load_data

    cfg = datasets.train_config(datasets.bench_dataset(None), (16, 20))
    data = load_data(cfg, progress=False)
    ours = fig_input._ours(data.train, len(data.train), cfg.image_size, batch=8)
    files = [os.path.join(cfg.train_dir, p) for p in data.train.paths]
    seed = fig_input._seed_style(files[:16], data.train.labels[:16], cfg.image_size, batch=8, workers=0)
    assert ours["steady_ips"] > 0 and seed["steady_ips"] > 0
    image = fig_input.seed_transform(16)(__import__("PIL.Image").Image.new("RGB", (24, 24)))
    assert tuple(image.shape) == (3, 16, 16)


def test_memory_sampler_sees_this_process():
    if not processes.MemorySampler.available():
        pytest.skip("needs Linux /proc")
    with processes.MemorySampler(os.getpid(), interval=0.05) as sampler:
        time.sleep(0.2)
    assert sampler.peak_rss_kib > 0 and sampler.peak_pss_kib > 0 and sampler.peak_processes >= 1
    assert sum(sampler.breakdown_mib.values()) > 0


def test_say_reaches_the_terminal_while_quiet_sends_output_to_the_log(tmp_path, capfd):
    """say() writes to fd 2 as it is when called (no copy taken at import), and inside quiet()
    to the terminal quiet() saved, while everything else goes to the log."""
    log = tmp_path / "logs" / "x.log"
    with processes.quiet(log):
        os.write(1, b"from fd 1\n")
        os.write(2, b"from fd 2\n")
        processes.say("progress inside")
    processes.say("progress outside")
    out, err = capfd.readouterr()
    assert "progress inside" in err and "progress outside" in err and "from fd" not in out + err
    assert log.read_text() == "from fd 1\nfrom fd 2\n"


def test_search_arms_are_the_default_search_and_fifo_random(tmp_path, tiny_demo):
    """ASHA + TPE is `run_search.py`'s defaults (automatic first rung, prefix sharing, TPE); FIFO
    random only swaps the sampler, puts the one rung at the last epoch and trains every epoch."""
    from optuna.samplers import RandomSampler

    from trainable.cli_config import DEMO_RECIPE
    from tuner.cli import DEMO_NUM_SAMPLES, parse_settings
    from tuner.search import build_searcher

    prof = profiles.PROFILES["quick"]["search"]
    asha, fifo = (parse_settings(fig_search.search_flags(prof, tmp_path / "r", trials=3, seed=42, arm=arm, name=arm))
                  for arm in ("asha", "fifo"))
    assert asha.sampler == "tpe" and asha.share_prefix and "grace_period" not in asha.explicit  # run_search places it
    assert fifo.sampler == "random" and not fifo.share_prefix and fifo.grace_period == fifo.base.epochs == 3
    assert (asha.num_samples, asha.seed, asha.space, asha.base) == (fifo.num_samples, fifo.seed, fifo.space, fifo.base)
    assert isinstance(build_searcher(fifo)._sampler, RandomSampler)
    default = profiles.PROFILES["default"]["search"]
    assert default["trials"] == DEMO_NUM_SAMPLES and len(default["seeds"]) >= 3
    demo = parse_settings(fig_search.search_flags(default, tmp_path / "r", trials=default["trials"], seed=42,
                                                  arm="asha", name="d"))
    for key in ("epochs", "image_size", "progressive_image_size", "backbone", "pretrained", "lr", "batch_size"):
        assert getattr(demo.base, key) == DEMO_RECIPE[key], key  # the demo recipe at its own size
    assert demo.base.train_meta == layout_paths(tiny_demo)["train_meta"]  # the whole demo data


def _summary(trained: int, best: float, seed_value: float, tied: int, epochs: int = 12) -> dict:
    """The search_summary.json keys the figures read, for one search of 12 trials."""
    return {"epochs_trained": trained, "epochs_consumed": trained + 10, "best_value": best, "num_trials": 12,
            "num_stopped_early": 8, "bench_wall_s": 60.0, "first_rung_ties": {"epoch": 5, "tied": tied, "scored": 12},
            "prefix_sharing": {"enabled": True, "trials_forked": 9, "epochs_shared": 10},
            "seed_trial": {"value": seed_value, "epochs": epochs}}


def test_p3_rows_judge_epochs_trained_seed_noise_and_first_rung_ties():
    fifo = [_summary(144, best, 0.35, 0) | {"epochs_consumed": 144} for best in (0.44, 0.48, 0.46)]
    asha = [_summary(trained, best, 0.35, tied) for trained, best, tied in ((40, 0.42, 0), (50, 0.47, 0), (45, 0.45, 2))]
    fig = FigureResult("P3", "x")
    fig_search.p3_rows(fig, {"asha": asha, "fifo": fifo}, 12, 0.005)
    rows = {row.measure.strip().split(",")[0]: row for row in fig.rows}
    ratio = rows["epochs trained"]
    assert ratio.value.startswith("0.31×") and ratio.passed is True  # 45 / 144
    assert rows["epochs consumed (every reported epoch)"].value.startswith("0.38×")  # 55 / 144
    best = rows["best macro-F1 (completed trials)"]
    assert best.passed is True and "ASHA − FIFO -0.0133" in best.note  # within 2 SE of 0.02 stds
    assert rows["level the models reach: the seed recipe (FIFO's trial 0"].value.startswith("0.3500 ± 0.0000")
    ties = rows["ASHA first rung (automatic): trials tied there"]
    assert ties.value == "0/12 at epoch 5, 0/12 at epoch 5, 2/12 at epoch 5" and ties.passed is False  # 2/12 > 10 %
    assert rows["ASHA trials stopped early; trials forked from a shared prefix; epochs shared (all seeds)"].value \
        == "24 of 36; 27; 30"
    fewer = FigureResult("P3", "x")
    fig_search.p3_rows(fewer, {"asha": asha[:1], "fifo": fifo[:1]}, 12, 0.005)
    assert fewer.rows[2].passed is None  # one search seed: no noise estimate, no verdict


def test_p4_rows_read_verify_json():
    from tuner.verify import compare

    winner, baseline = [0.42, 0.44, 0.45], [0.35, 0.351, 0.349]
    verify = {"seeds": [42, 43, 44], "winner_trial_id": "b", "baseline_trial_id": "a", "bench_wall_s": 500.0,
              "winner": {"macro_f1": winner}, "baseline": {"macro_f1": baseline},
              "comparison": {"macro_f1": compare(winner, baseline), "tail_acc": compare([1.0, 2.0, 0.0], [0.0, 0.0, 0.1])}}
    fig = FigureResult("P4", "x")
    fig_search.p4_rows(fig, _summary(30, 0.42, 0.35, 0) | {"epochs_per_training": 12}, verify, timed=True)
    cost, consumed, _, delta, tail, same, wall = fig.rows
    assert cost.value.startswith("2.50× (30 / 12") and cost.passed is True and not cost.note  # moonshot is ≤ 2×
    assert consumed.value.startswith("3.33× (40 epochs; 9 trials forked, 10 epochs shared)")
    assert delta.value.startswith("+0.0867 ± 0.0088 SE") and delta.passed is True
    assert tail.note == "within 2 SE" and same.passed is True and wall.passed is True
    verify["winner"]["macro_f1"] = [0.41, 0.44, 0.45]  # verify did not reproduce the trial's score
    fig = FigureResult("P4", "x")
    fig_search.p4_rows(fig, _summary(30, 0.42, 0.35, 0) | {"epochs_per_training": 12}, verify, timed=False)
    assert fig.rows[5].passed is False and fig.rows[6].passed is None


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
    ctx = profiles.Context(mode="quick", run_id="g1")
    try:
        rows = fig_cuda.trial_results(ctx, images=images, epochs=2, device_flags=["--device", "cpu"],
                                      model="test_resnet", size=32, batch=16)
    finally:
        processes.stop_ray()
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["time_this_iter_s"] >= row["epoch_time_s"] > 0 and 0 <= row["data_wait_frac"] < 1
        seen = row["train_images_per_s"] * row["train_time_s"]  # images trained in the epoch
        assert 3 * train_images - 1 <= round(seen) <= 3 * train_images  # fit() drops a last batch of 1


def test_stats_helpers():
    assert median([3.0, float("nan"), 1.0, 2.0]) == 2.0
    mean, std = mean_std([1.0, 3.0])
    assert mean == 2.0 and np.isclose(std, np.sqrt(2))
    assert fmt(float("nan")) == "n/a" and fmt_s(75) == "1 min 15 s"


def test_end_to_end_projection_uses_p1_p4_p6(tiny_demo):
    from bench import fig_cli

    ctx = profiles.Context(mode="default", run_id="t")
    fig = FigureResult("P6", "x")
    fig_cli.project_e2e(ctx, fig)
    assert not fig.rows  # nothing to project from yet
    ctx.shared.update({
        "demo_search": {"scaled": True, "epochs_consumed": 50, "epochs_trained": 40},  # 10 replayed from a prefix
        "p1": {"train_images": 10, "val_images": 5, "tune_time_this_iter_s": [9.0, 3.0, 3.0]},
        "p6_first": {"startup_s": 10.0},
    })
    fig_cli.project_e2e(ctx, fig)
    (row,) = fig.rows
    images = sum(1 for s in ("train", "val") for _ in open(layout_paths(tiny_demo)[f"{s}_meta"])) - 2
    assert fig.raw["e2e_projection"]["seconds"] == 10.0 + 40 * 3.0 * images / 15  # epochs trained, not replayed
    assert row.passed == (fig.raw["e2e_projection"]["seconds"] <= 600)
