"""Running things and measuring them: subprocesses, the in-process search, Ray, output, memory, CPU time.

launch/finish/interrupt run a user-facing command as the user does (its own session and log,
Ctrl-C past a timeout); run_search_inprocess runs tuner.search.run_search on parsed
`run_search.py` flags, with no tracking hooks, in one local Ray session (ensure_ray/stop_ray).
quiet() sends fd 1 and 2 to a log while say() keeps writing progress lines to the terminal.
MemorySampler and cpu_seconds_by_name read a process tree from Linux /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.profiles import REPO

PYTHON = sys.executable


_CONSOLE: list[int] = []  # the real terminal's fd 2, saved by each active quiet() (outermost first)


@contextlib.contextmanager
def quiet(log_path: Path):
    """Send fd 1 and 2 (Python, Ray, Tune, C++ logs) to log_path for the duration."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    _CONSOLE.append(saved[1])
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
            _CONSOLE.pop()
            os.close(saved[0])
            os.close(saved[1])


def say(message: str) -> None:
    """Progress line on the real terminal, also while quiet() redirects fd 1/2."""
    line = f"[bench {time.strftime('%H:%M:%S')}] {message}\n"
    if _CONSOLE:
        os.write(_CONSOLE[0], line.encode())
    else:
        sys.stderr.write(line)
        sys.stderr.flush()


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


def run_search_inprocess(argv: list[str], log_path: Path) -> dict:
    """tuner.search.run_search on parsed `run_search.py` flags, without tracking hooks.

    Returns the search summary (search_summary.json) plus the bench's own wall time
    (`bench_wall_s`) and every trial's reported results (`trial_results`).
    """
    from tuner.cli import parse_settings
    from tuner.search import run_search

    started = time.perf_counter()
    with quiet(log_path):
        settings = parse_settings(argv)
        code = run_search(settings, hooks=[])
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

    RSS counts a shared page once per process that maps it (P5's goal is stated as "RSS
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
