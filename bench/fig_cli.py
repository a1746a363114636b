"""P5: peak memory with 4 concurrent trials vs 1; P6: --help, first trial result, demo search end to end.

Both run `run_search.py` as a user does, in a subprocess with its own local Ray, from a
scratch working directory (so an MLflow store it creates lands there):

- P5: the peak of RSS (and PSS) summed over the whole process tree, sampled from /proc, for
  1 trial and for 4 concurrent trials of one epoch each; the peak split by process, and the
  RSS of a fresh interpreter holding only a trial's imports (the least a trial worker costs).
  Sized by the mode's `memory` profile.
- P6: `run_search.py --help` (median of several runs); the time from launching the demo search
  until the first trial result lands in the experiment dir (then Ctrl-C), with the process
  tree's CPU seconds and the launch's serial floor (`serial_floor`); the demo search end to
  end, measured with --full, else projected (`project_e2e`). Sized by the `cli` profile.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from bench.datasets import bench_dataset, config_flags, train_config
from bench.processes import PYTHON, MemorySampler, descendants, finish, interrupt, launch, repo_env, say
from bench.profiles import REPO, Context
from bench.rows import FigureResult, fmt, fmt_s, median

RUN_SEARCH = str(REPO / "run_search.py")


def _search_argv(ctx: Context, flags: list[str], name: str) -> list[str]:
    return [PYTHON, RUN_SEARCH, *flags, "--storage-path", str(ctx.storage), "--name", name]


def _scratch(ctx: Context, name: str) -> Path:
    path = ctx.work / "cwd" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _child(code: str, stdin: str | None = None) -> tuple[float, str]:
    """`python -c code` in a fresh interpreter, from the repo (as run_search.py runs): (wall s, stdout)."""
    started = time.perf_counter()
    out = subprocess.run([PYTHON, "-c", code], input=stdin, capture_output=True, text=True, env=repo_env(),
                         cwd=REPO, timeout=300, check=True)
    return time.perf_counter() - started, out.stdout


# ---------------------------------------------------------------------------------- P5
def _memory_run(ctx: Context, trials: int) -> dict:
    prof = ctx.profile["memory"]
    cpus = os.cpu_count() or 1
    name = f"p5-{trials}trials-{ctx.run_id}"
    flags = config_flags(bench_dataset(prof["data"]), prof["size"], 1) + [
        "--space", "stage_epochs", "--num-samples", str(trials), "--max-concurrent", str(trials)]
    if trials > 1:
        flags += ["--cpus-per-trial", f"{cpus / trials:g}"]
    say(f"P5: run_search.py with {trials} concurrent trial(s), 1 epoch each")
    started = time.perf_counter()
    proc = launch(_search_argv(ctx, flags, name), ctx.log(name), cwd=_scratch(ctx, name))
    with MemorySampler(proc.pid) as sampler:
        code = finish(proc, timeout=1800)
    if code != 0:
        raise RuntimeError(f"{name} exited {code}; see {ctx.log(name)}")
    return {"peak_rss_mib": sampler.peak_rss_kib / 1024, "peak_pss_mib": sampler.peak_pss_kib / 1024,
            "peak_processes": sampler.peak_processes, "rss_by_process_mib": sampler.breakdown_mib, "wall_s": time.perf_counter() - started,
            "results": _first_results(ctx.storage / name)}


def _first_results(experiment: Path) -> list[dict]:
    out = []
    for result_file in sorted(experiment.glob("*/result.json")):
        lines = [line for line in result_file.read_text().splitlines() if line.strip()]
        if lines:
            row = json.loads(lines[0])
            out.append({k: row.get(k) for k in ("time_this_iter_s", "epoch_time_s", "train_images_per_s",
                                                 "time_total_s")})
    return out


def _dataset_mib(prof: dict) -> float:
    """Size of the decoded train + val arrays the trials share."""
    from trainable.data.dataset import load_data

    cfg = train_config(bench_dataset(prof["data"]), prof["size"], 1)
    data = load_data(cfg, progress=False)
    return (data.train.images.nbytes + data.val.images.nbytes) / 2**20


TRIAL_PROCESS = "ray::ImplicitFu"  # a Tune function-trainable worker, as /proc/<pid>/comm shows it
DRIVER_PROCESS = "python run_search.py"
# What a trial worker imports before it trains (torch, timm, scikit-learn, Ray Tune's pandas).
TRIAL_IMPORTS = "import trainable.tune_entry, trainable.train.loop, ray.tune"


def _import_floor_mib() -> float:
    """RSS of a fresh interpreter after a trial's imports alone: the least a trial worker costs."""
    _, out = _child(f"{TRIAL_IMPORTS}\n"
                    "print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:')][0])")
    return int(out.split()[-1]) / 1024


def _split(run: dict, trials: int) -> dict:
    """RSS at the run's peak: per trial worker, the driver, and everything else (Ray's own processes)."""
    by_name = run["rss_by_process_mib"]
    workers = by_name.get(TRIAL_PROCESS, 0.0)
    driver = by_name.get(DRIVER_PROCESS, 0.0)
    return {"per_trial": workers / trials, "driver": driver, "rest": run["peak_rss_mib"] - workers - driver}


def run_p5(ctx: Context) -> FigureResult:
    prof = ctx.profile["memory"]
    fig = FigureResult("P5", "peak memory, 4 concurrent trials vs 1")
    if not MemorySampler.available():
        fig.add("peak RSS summed over processes, 4 trials / 1", "n/a (needs Linux /proc)", "≤ 1.5×", None)
        return fig
    dataset = _dataset_mib(prof)
    one = _memory_run(ctx, 1)
    many = _memory_run(ctx, prof["trials"])
    ctx.shared["p5"] = {"one": one, "many": many}
    fig.raw = {"one": one, "many": many, "dataset_mib": dataset}
    fig.sizing = {"data": prof["data"] or "whole demo data", "epochs": 1, "trials": prof["trials"],
                  "dataset_mib": round(dataset, 1)}
    ratio = many["peak_rss_mib"] / one["peak_rss_mib"]
    extra = (many["peak_pss_mib"] - one["peak_pss_mib"]) / (prof["trials"] - 1)
    fig.add(f"peak RSS summed over processes, {prof['trials']} concurrent trials / 1",
            f"{ratio:.2f}× ({fmt(many['peak_rss_mib'])} vs {fmt(one['peak_rss_mib'])} MiB)", "≤ 1.5×", ratio <= 1.5)
    fig.add("  same with PSS (shared pages split between processes)",
            f"{many['peak_pss_mib'] / one['peak_pss_mib']:.2f}× ({fmt(many['peak_pss_mib'])} vs "
            f"{fmt(one['peak_pss_mib'])} MiB)")
    fig.add("  PSS per extra trial vs the decoded dataset (train + val)",
            f"{fmt(extra)} MiB per trial; dataset {fmt(dataset)} MiB",
            note="an extra trial costing less than the dataset means it is shared, not copied")
    a, b = _split(one, 1), _split(many, prof["trials"])
    fig.add("  RSS at the peak: per trial worker / driver / Ray's own processes, 1 trial vs "
            f"{prof['trials']}",
            f"{fmt(a['per_trial'])} / {fmt(a['driver'])} / {fmt(a['rest'])} vs "
            f"{fmt(b['per_trial'])} / {fmt(b['driver'])} / {fmt(b['rest'])} MiB")
    floor = _import_floor_mib()
    fixed = one["peak_rss_mib"] - a["per_trial"]
    bound = (fixed + prof["trials"] * floor) / (fixed + floor)
    fig.raw.update({"split_one": a, "split_many": b, "trial_import_floor_mib": floor, "ratio_bound": bound})
    fig.add("  RSS of a trial's imports alone (fresh interpreter) and the ratio it bounds",
            f"{fmt(floor)} MiB; ≥ {bound:.2f}× with the rest as measured",
            note=f"`{TRIAL_IMPORTS}`: one process per trial, each mapping these")
    return fig


# ---------------------------------------------------------------------------------- P6
def _help_times(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = launch([PYTHON, RUN_SEARCH, "--help"], Path(os.devnull), cwd=REPO)
        finish(proc, timeout=120)
        times.append(time.perf_counter() - started)
    return times


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by root's process tree, reaped children included
    (cutime/cstime: e.g. a finished check process, Ray's exec'd worker start-up). Less sensitive
    to the machine's load than wall time: it counts the work done, not the waiting."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / ticks


def first_result(ctx: Context) -> dict:
    """Launch the demo search and time the first trial result landing in the experiment dir."""
    prof = ctx.profile["cli"]
    name = f"p6-first-{ctx.run_id}"
    flags = ["--space", "stage_epochs", "--demo"]
    if prof["first_result_data"] is not None:
        flags = config_flags(bench_dataset(prof["first_result_data"]), None) + ["--space", "stage_epochs"]
    say("P6: time to the first trial result of the demo search")
    experiment = ctx.storage / name
    started = time.perf_counter()
    proc = launch(_search_argv(ctx, flags, name), ctx.log(name), cwd=_scratch(ctx, name))
    seen, row = None, None
    try:
        while proc.poll() is None and time.perf_counter() - started < 900:
            for result_file in experiment.glob("*/result.json"):
                text = result_file.read_text()
                if text.strip():
                    seen = time.perf_counter() - started
                    row = json.loads(text.splitlines()[0])
                    break
            if seen is not None:
                cpu = tree_cpu_s(proc.pid)
                break
            time.sleep(0.05)
    finally:
        interrupt(proc, grace=60)
        proc._bench_log.close()
    if seen is None:
        raise RuntimeError(f"no trial result within the time limit; see {ctx.log(name)}")
    first_epoch = row.get("time_this_iter_s", float("nan"))
    return {"seconds": seen, "first_epoch_s": first_epoch, "startup_s": seen - first_epoch,
            "epoch_time_s": row.get("epoch_time_s"), "exit_code_after_ctrl_c": proc.returncode,
            "cpu_s": cpu, "loadavg": os.getloadavg()[0]}


# import ray + ray.init as tuner.search.connect starts a local Ray, timed from inside (its
# shutdown is not part of a launch)
RAY_START = ("import time\nfrom tuner.search import LOCAL_RAY_CONFIG\nstarted = time.perf_counter()\nimport ray\n"
             "ray.init(address='local', _system_config=LOCAL_RAY_CONFIG)\n"
             "print('ray-start', time.perf_counter() - started, flush=True)\nray.shutdown()")


def serial_floor(first: dict) -> dict:
    """The launch's steps that wait for one another, each run alone, one after another: the
    model check (the child process prepare_search starts: torch + timm + building the demo
    model; the driver's own checks overlap it), a local Ray's start (import ray + ray.init), a
    trial's imports in a fresh interpreter (a Tune worker imports them before it trains; the
    interpreter's own start is in it) and the first result's own epoch (from the run). Tune's
    scheduling and the trial's data and model set-up are left out: a floor, not an estimate."""
    demo = train_config(bench_dataset(None), None)
    model_check, verdict = _child("from tuner.prepare import model_check_main; model_check_main()",
                                  stdin=json.dumps(demo.to_dict()))
    if '"error": null' not in verdict:
        raise RuntimeError(f"the model check of the demo config failed: {verdict.strip()[-300:]}")
    _, printed = _child(RAY_START)
    ray_start = float(printed.split("ray-start")[-1].split()[0])
    imports, _ = _child(TRIAL_IMPORTS)
    epoch = first.get("epoch_time_s") or float("nan")
    return {"model_check_s": model_check, "ray_init_s": ray_start, "trial_imports_s": imports, "epoch_s": epoch,
            "total_s": model_check + ray_start + imports + epoch}


def run_p6(ctx: Context) -> FigureResult:
    prof = ctx.profile["cli"]
    fig = FigureResult("P6", "CLI latency and end to end")
    say("P6: run_search.py --help")
    helps = _help_times(prof["help_runs"])
    fig.raw["help_s"] = helps
    fig.add(f"run_search.py --help wall time (median of {len(helps)})", f"{median(helps):.2f} s", "≤ 1 s",
            median(helps) <= 1.0)
    if prof["first_result"]:
        first = first_result(ctx)
        ctx.shared["p6_first"] = first
        fig.raw["first_result"] = first
        what = "demo search" if prof["first_result_data"] is None else "demo recipe on bench data"
        fig.add(f"first trial result after launch ({what})", fmt_s(first["seconds"]), "≤ 20 s",
                first["seconds"] <= 20,
                note=f"start-up {fmt_s(first['startup_s'])} + first epoch {fmt_s(first['first_epoch_s'])}")
        fig.add("  CPU used by the whole process tree until then; first result's epoch / its in-trial start",
                f"{first['cpu_s']:.1f} s; {fmt_s(first['epoch_time_s'])} / "
                f"{fmt_s(first['first_epoch_s'] - first['epoch_time_s'])}",
                note=f"the work done, less load-sensitive than wall time (1-min load {first['loadavg']:.1f})")
    if prof["first_result"] and prof["first_result_data"] is None:  # the floor of the demo launch
        try:
            floor = serial_floor(first)
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
            fig.add("  its serial steps, each timed alone", f"n/a ({str(exc)[:200]})")
        else:
            fig.raw["serial_floor"] = floor
            fig.add("  its serial steps, each timed alone: model check + Ray start + a trial's imports + the epoch",
                    f"{fmt_s(floor['total_s'])} ({fmt_s(floor['model_check_s'])} + {fmt_s(floor['ray_init_s'])} + "
                    f"{fmt_s(floor['trial_imports_s'])} + {fmt_s(floor['epoch_s'])})",
                    note="each waits for the one before: checks before Ray starts, a trial after, its result "
                         "after an epoch; each run alone, one after another: a floor with zero overhead")
    fig.sizing = {"help_runs": prof["help_runs"], "e2e": prof["e2e"]}
    return fig


def project_e2e(ctx: Context, fig: FigureResult) -> None:
    """P6's end-to-end row, once P4's demo search (and the loop timing of P1) are known.

    --full: the real demo search's wall time. Otherwise a projection: P6's measured start-up +
    the epochs the demo search trained (P4's epochs_trained, counted exactly) x the
    wall time of one demo-data epoch (P1's epoch under Tune, scaled by image count to the
    whole demo data, all CPUs busy).
    """
    search = ctx.shared.get("demo_search")
    if search is None:
        return
    if not search.get("scaled"):
        seconds = search["bench_wall_s"]
        fig.add("demo search end to end (run_search.py --space stage_epochs --demo)", fmt_s(seconds), "≤ 10 min",
                seconds <= 600)
        fig.raw["e2e_s"] = seconds
        return
    p1, first = ctx.shared.get("p1"), ctx.shared.get("p6_first")
    if not p1 or not first or ctx.profile["loop"]["size"] is not None:
        fig.add("demo search end to end", "not measured (needs P1, P4, P6 at demo size; or --full)", "≤ 10 min")
        return
    from bench.datasets import demo_root
    from trainable.data.demo.dataset import layout_paths

    paths = layout_paths(demo_root())
    demo_images = sum(sum(1 for _ in open(paths[f"{s}_meta"])) - 1 for s in ("train", "val"))
    loop_images = p1["train_images"] + p1["val_images"]
    epoch_s = median(p1["tune_time_this_iter_s"][1:]) * demo_images / loop_images
    # epochs replayed from a shared prefix (trainable.train.prefix) cost a checkpoint load, not an epoch
    epochs = search.get("epochs_trained", search["epochs_consumed"])
    projected = first["startup_s"] + epochs * epoch_s
    fig.raw["e2e_projection"] = {"startup_s": first["startup_s"], "epochs": epochs,
                                 "epoch_s": epoch_s, "seconds": projected}
    fig.add("demo search end to end (projected)", fmt_s(projected), "≤ 10 min", projected <= 600,
            note=f"{epochs} epochs trained x {epoch_s:.1f} s + start-up; run --full to measure")
