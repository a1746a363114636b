"""Shared pieces of the benchmark: rows, statistics, sizing, bench datasets, processes, memory.

Nothing here decides a figure; the figure modules (bench/fig_*.py) do. Every figure drives
the project's own entry points (fit(), tuner.search.run_search, `run_search.py` as a
subprocess); this module only prepares data, runs things and measures them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tuner.cli import DEMO_NUM_SAMPLES

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".work"          # logs, bench datasets, Tune experiments (git-ignored)
PYTHON = sys.executable


# ---------------------------------------------------------------------------------- rows
@dataclass
class Row:
    """One line of the results table."""
    id: str
    measure: str
    value: str
    goal: str = ""
    passed: bool | None = None        # None: informative, or not measurable in this mode
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "FAIL", None: "-"}[self.passed]


@dataclass
class FigureResult:
    id: str
    title: str
    rows: list[Row] = field(default_factory=list)
    raw: dict = field(default_factory=dict)       # every number measured, for results.json
    sizing: dict = field(default_factory=dict)    # what was run (data, epochs, trials, seeds)
    elapsed_s: float = 0.0
    error: str | None = None

    def add(self, *args, **kwargs) -> Row:
        row = Row(self.id, *args, **kwargs)
        self.rows.append(row)
        return row


# ---------------------------------------------------------------------------------- stats
def median(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else float("nan")


def mean_std(values) -> tuple[float, float]:
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"


def fmt_s(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


# ---------------------------------------------------------------------------------- sizing
# One dict per mode; each figure reads its own entries. `data` entries describe a bench
# dataset (bench_dataset): `fraction` of each class's demo train images (at least one per
# class, so the long tail keeps its shape) and `val_per_class` validation images.
PROFILES: dict[str, dict] = {
    "quick": {
        "loop": {"data": {"fraction": 0.06, "val_per_class": 1}, "size": (32, 40), "epochs": 2, "aba": False},
        "input": {"images": 256, "jpeg_images": 0, "batch": 64},
        "search": {"data": {"fraction": 0.06, "val_per_class": 1}, "size": (32, 40), "trials": 3, "epochs": 3,
                   "seeds": (42,), "scaling": (2,), "verify_seeds": 2},
        "memory": {"data": {"fraction": 0.06, "val_per_class": 1}, "size": (32, 40), "trials": 4},
        "cli": {"help_runs": 3, "first_result": True, "first_result_data": {"fraction": 0.06, "val_per_class": 1},
                "e2e": "projected"},
        "cuda": {"images": 2048, "epochs": 2, "bare_steps": 20},
    },
    "default": {
        # P1 + T1: the demo recipe (48/56 px) on the whole demo data, 4 epochs, bare-Tune-bare.
        "loop": {"data": None, "size": None, "epochs": 4, "aba": True},
        "input": {"images": None, "jpeg_images": 384, "batch": 64},
        # P3 + T2 + P4: the demo search as `run_search.py --space stage_epochs --demo` runs it
        # (DEMO_NUM_SAMPLES = 12 trials of the 12-epoch demo recipe at 48/56 px on the whole demo
        # data; epochs None = the recipe's own), 3 search seeds (42 is the demo's: P4 verifies that
        # run, 3 training seeds); T2: 3 / 6 / 12 trials on seed 42 (12 is P3's run).
        "search": {"data": None, "size": None, "trials": DEMO_NUM_SAMPLES, "epochs": None,
                   "seeds": (42, 1, 2), "scaling": (3, 6, 12), "verify_seeds": 3},
        "memory": {"data": {"fraction": 0.25, "val_per_class": 4}, "size": None, "trials": 4},
        "cli": {"help_runs": 5, "first_result": True, "first_result_data": None, "e2e": "projected"},
        "cuda": {"images": 8192, "epochs": 3, "bare_steps": 60},
    },
    "full": {
        "loop": {"data": None, "size": None, "epochs": 5, "aba": True},
        "input": {"images": None, "jpeg_images": 768, "batch": 64},
        "search": {"data": None, "size": None, "trials": DEMO_NUM_SAMPLES, "epochs": None,
                   "seeds": (42, 1, 2, 3, 4), "scaling": (3, 6, 12), "verify_seeds": 3},
        "memory": {"data": None, "size": None, "trials": 4},
        "cli": {"help_runs": 5, "first_result": True, "first_result_data": None, "e2e": "real"},
        "cuda": {"images": 16384, "epochs": 4, "bare_steps": 100},
    },
}


# ---------------------------------------------------------------------------------- data
def demo_root() -> Path:
    import io

    from trainable.data.demo.dataset import ensure_demo_dataset

    with contextlib.redirect_stdout(io.StringIO()):  # its "demo data: PATH" line
        return ensure_demo_dataset(seed=0)


def bench_dataset(spec: dict | None) -> dict:
    """TrainConfig path fields for a stratified subset of the demo data (None: the whole demo data).

    The subset reuses the demo's image files (only new metadata CSVs are written, under
    bench/.work/data/), so its decode cache is keyed by exactly those files and is reused by
    later bench runs.
    """
    from trainable.data.demo.dataset import DEMO_VERSION, layout_paths

    root = demo_root()
    paths = layout_paths(root)
    if spec is None:
        return paths
    import numpy as np

    from trainable.data.metadata import class_counts, compute_class_weights, write_csv_atomic

    fraction, val_per_class = float(spec["fraction"]), int(spec["val_per_class"])
    repeat = int(spec.get("repeat", 1))  # list every train image this many times (GPU epochs)
    # the demo version in the name: a subset lists files of one generation of the demo data
    name = f"demo{DEMO_VERSION}-f{fraction:g}-v{val_per_class}" + (f"-r{repeat}" if repeat > 1 else "")
    folder = WORK / "data" / name / "metadata"
    out = {**paths, "train_meta": str(folder / "train_metadata.csv"), "val_meta": str(folder / "val_metadata.csv"),
           "class_weights": str(folder / "class_weights.csv")}
    if Path(out["class_weights"]).is_file():
        return out
    header, train_rows = _read_rows(paths["train_meta"])
    _, val_rows = _read_rows(paths["val_meta"])
    label_col = header.index("label_61")
    train_keep = _stratified(train_rows, label_col, lambda n: max(1, math.ceil(n * fraction))) * repeat
    val_keep = _stratified(val_rows, label_col, lambda n: min(n, val_per_class))
    write_csv_atomic(Path(out["train_meta"]), header, train_keep)
    write_csv_atomic(Path(out["val_meta"]), header, val_keep)
    counts = class_counts(np.array([int(r[label_col]) for r in train_keep]))
    weights = compute_class_weights(counts)
    write_csv_atomic(Path(out["class_weights"]), ["label_61", "weight"],
                     [[label, f"{w:.6f}"] for label, w in enumerate(weights)])
    return out


def _read_rows(path: str) -> tuple[list[str], list[list[str]]]:
    import csv

    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def _stratified(rows: list[list[str]], label_col: int, keep) -> list[list[str]]:
    by_label: dict[str, list[list[str]]] = {}
    for row in rows:
        by_label.setdefault(row[label_col], []).append(row)
    out = []
    for label in sorted(by_label, key=int):
        group = by_label[label]
        out += group[:keep(len(group))]
    return out


def config_flags(paths: dict, size: tuple[int, int] | None, epochs: int | None = None) -> list[str]:
    """Command-line flags (the TrainConfig ones) for the demo recipe on a bench dataset."""
    flags = ["--demo"]
    for key, value in paths.items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    if size is not None:
        flags += ["--image-size", str(size[0]), "--progressive-image-size", str(size[1])]
    if epochs is not None:
        flags += ["--epochs", str(epochs)]
    return flags


def train_config(paths: dict, size: tuple[int, int] | None, epochs: int | None = None, **extra):
    """The TrainConfig that `python -m trainable <config_flags(...)>` would train (demo recipe)."""
    from trainable.cli import build_parser
    from trainable.cli_config import resolve_config

    ns = build_parser().parse_args(config_flags(paths, size, epochs))
    for key, value in extra.items():
        setattr(ns, key, value)
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the demo dataset's "demo data: PATH" line
        return resolve_config(ns)


# ---------------------------------------------------------------------------------- output
@contextlib.contextmanager
def quiet(log_path: Path):
    """Send fd 1 and 2 (Python, Ray, Tune, C++ logs) to log_path for the duration."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# The real terminal, kept before any quiet() redirects fd 1/2.
_CONSOLE = os.fdopen(os.dup(2), "w", buffering=1)


def say(message: str) -> None:
    """Progress line on the real terminal, also while quiet() redirects fd 1/2."""
    _CONSOLE.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")


# ---------------------------------------------------------------------------------- ray
_RAY_STARTED = False


def ensure_ray(log_path: Path) -> None:
    """One local Ray session for the in-process searches (run_search reuses a running one)."""
    global _RAY_STARTED
    import ray

    if ray.is_initialized():
        return
    with quiet(log_path):
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
    _RAY_STARTED = True


def stop_ray() -> None:
    global _RAY_STARTED
    if _RAY_STARTED:
        import ray

        ray.shutdown()
        _RAY_STARTED = False


def run_search_inprocess(argv: list[str], log_path: Path, searcher=None) -> dict:
    """tuner.search.run_search on parsed `run_search.py` flags, without tracking hooks.

    `searcher`: optional replacement for tuner.search.build_searcher (the FIFO random arm);
    everything else is the search exactly as `run_search.py` builds it. Returns the search
    summary (search_summary.json) plus the bench's own wall time and the trials' results.
    """
    import tuner.search as search
    from tuner.cli import parse_settings

    original = search.build_searcher
    started = time.perf_counter()
    with quiet(log_path):
        settings = parse_settings(argv)
        if searcher is not None:
            search.build_searcher = searcher
        try:
            code = search.run_search(settings, hooks=[])
        finally:
            search.build_searcher = original
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"search {settings.name} exited {code}; see {log_path}")
    path = Path(settings.storage_path) / settings.name
    summary = json.loads((path / "search_summary.json").read_text())
    summary["bench_wall_s"] = wall
    summary["trial_results"] = trial_results(path)
    return summary


def trial_results(experiment: Path) -> dict[str, list[dict]]:
    """Every reported result of every trial of a Tune experiment (its result.json lines)."""
    out = {}
    for result_file in sorted(experiment.glob("*/result.json")):
        rows = []
        for line in result_file.read_text().splitlines():
            if line.strip():
                with contextlib.suppress(ValueError):
                    rows.append(json.loads(line))
        out[result_file.parent.name] = rows
    return out


# ---------------------------------------------------------------------------------- processes
def descendants(root: int) -> list[int]:
    """root and every process below it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _kib(path: str, key: str) -> int:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler:
    """Peak of RSS (and PSS) summed over a process tree, sampled in a thread every `interval` s.

    RSS counts a shared page once per process that maps it (the issue's definition: "RSS
    summed over processes"); PSS splits shared pages between their processes, so its sum is
    what the tree really occupies.
    """

    def __init__(self, root: int, interval: float = 0.3):
        self.root, self.interval = root, interval
        self.peak_rss_kib = self.peak_pss_kib = 0
        self.peak_processes = 0
        self.breakdown_mib: dict[str, float] = {}   # RSS by process name at the RSS peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def available() -> bool:
        return os.path.isdir("/proc") and os.path.exists(f"/proc/{os.getpid()}/smaps_rollup")

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = descendants(self.root)
            per_process = {p: _kib(f"/proc/{p}/status", "VmRSS:") for p in pids}
            rss = sum(per_process.values())
            pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
            if rss > self.peak_rss_kib:
                self.breakdown_mib = _by_name(per_process)
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.peak_pss_kib = max(self.peak_pss_kib, pss)
            self.peak_processes = max(self.peak_processes, len(pids))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cpu_seconds_by_name(root: int) -> dict[str, float]:
    """CPU time (user + system) so far of every process under root, summed by process name."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def _by_name(rss_kib: dict[int, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid, kib in rss_kib.items():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                args = handle.read().split(b"\0")
            name = os.path.basename(args[0].decode(errors="replace")) or "?"
            if name.startswith("python") and len(args) > 1:
                name = "python " + os.path.basename(args[1].decode(errors="replace"))
            with open(f"/proc/{pid}/comm") as handle:
                comm = handle.read().strip()
            if comm.startswith("ray::"):
                name = comm
        except OSError:
            continue
        out[name] = round(out.get(name, 0.0) + kib / 1024, 1)
    return dict(sorted(out.items(), key=lambda item: -item[1]))


def repo_env(**extra: str) -> dict:
    """This process's environment (+ extra) with the repo first on PYTHONPATH: a child Python
    imports tuner/, trainable/ and bench/ from this checkout."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def launch(argv: list[str], log_path: Path, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start argv in cwd (a scratch dir: an MLflow store or checkpoints it writes land there)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    Path(cwd).mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    full_env = repo_env(PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                            start_new_session=True)
    proc._bench_log = log  # closed in finish()
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> int:
    """Wait for proc; past timeout, Ctrl-C it (Tune saves its state), then kill its group."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        interrupt(proc, grace=30)
        return proc.returncode if proc.returncode is not None else -9
    finally:
        proc._bench_log.close()


def interrupt(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGINT (what Ctrl-C sends), then SIGKILL to its process group if it does not end."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def machine_info() -> dict:
    info = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": sys.platform}
    with contextlib.suppress(OSError):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    with contextlib.suppress(OSError):
        info["mem_total_gib"] = round(_kib("/proc/meminfo", "MemTotal:") / 2**20, 1)
    with contextlib.suppress(Exception):
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    with contextlib.suppress(Exception):
        import ray

        info["ray"] = ray.__version__
    return info


# ---------------------------------------------------------------------------------- context
@dataclass
class Context:
    """What every figure gets: the mode, its sizing, a work dir for this run, shared results."""
    mode: str                                   # quick | default | full
    run_id: str
    shared: dict = field(default_factory=dict)  # results one figure computes and another reuses

    @property
    def profile(self) -> dict:
        return PROFILES[self.mode]

    @property
    def work(self) -> Path:
        path = WORK / "runs" / self.run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def storage(self) -> Path:
        return self.work / "ray_results"

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def once(self, key: str, compute):
        """compute() the first time key is asked for in this run; the cached value afterwards."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]
