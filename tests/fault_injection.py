"""Test-only fault injection into the production code paths, which carry no test hook.

A search's trials: `faulty(wrapped_trainable, plan)` wraps what `tuner.search.wrapped_trainable`
builds. Inside the trial's worker it swaps `trainable.tune_entry._report` (the per-epoch report
step) for one that injects the plan's faults around the real report, runs the real trial, and
puts the real report back. A plan is a dict; every key but "dir" is optional:

    {"dir": DIR,                         # where a fault that fires leaves its marker
     "fail_once_at_epoch": N,            # raise before reporting epoch N; trial id in DIR/raised
     "hold_once_before_report": [N, S],  # sleep S s before reporting (checkpointing) epoch N;
                                         # trial id in DIR/held, the worker's pid in DIR/held_pid
     "pause_once_after_epoch": [N, S]}   # sleep S s after reporting epoch N; trial id in DIR/paused

Each fault fires once, in the first trial to get there: its marker is created exclusively, and
a fault whose marker exists does not fire (delete the marker to arm it again).

In this process: `install(monkeypatch, plan)`. As a command, for searches a test signals:

    python tests/fault_injection.py search PLAN_JSON [run_search.py args]

and `python -m trainable` whose epoch-EPOCH checkpoint write stalls half-way (`stalling_train`):

    python tests/fault_injection.py stall-train MARKER EPOCH [python -m trainable flags]
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def install(monkeypatch, plan: dict) -> None:
    """Searches in this process run their trials with the plan's faults (until monkeypatch undoes it)."""
    import tuner.search

    ship_by_value()
    monkeypatch.setattr(tuner.search, "wrapped_trainable", faulty(tuner.search.wrapped_trainable, plan))


def ship_by_value() -> None:
    """Ray workers cannot import this test module by name: its functions travel by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def faulty(wrapped_trainable, plan: dict):
    """A `wrapped_trainable` (same signature) whose trainable runs with the plan's faults."""

    def faulty_wrapped_trainable(data, base, per_trial, settings=None):
        real = wrapped_trainable(data, base, per_trial, settings)

        def train_trial(config):
            return run_with_faults(real, config, plan)

        vars(train_trial).update(vars(real))  # with_resources' per-trial resources
        train_trial.__name__ = real.__name__  # Tune names trials (and checks a restore) by it
        return train_trial

    return faulty_wrapped_trainable


def run_with_faults(trial, config: dict, plan: dict):
    """trial(config) with trainable.tune_entry._report swapped for a faulting one; in the worker."""
    import trainable.tune_entry as entry

    real = getattr(entry._report, "real_report", entry._report)  # a reused worker: never wrap twice

    def report(result, data=None, sharing=None):
        epoch = int(result.epoch)
        if fires(plan, "fail_once_at_epoch", "raised", epoch):
            raise RuntimeError(f"injected test fault at epoch {epoch}")
        if fires(plan, "hold_once_before_report", "held", epoch):
            pid_file = Path(plan["dir"]) / "held_pid"
            pid_file.with_suffix(".tmp").write_text(f"{os.getpid()}\n")
            os.replace(pid_file.with_suffix(".tmp"), pid_file)  # whole, or not there yet
            time.sleep(float(plan["hold_once_before_report"][1]))
        real(result, data, sharing)
        if fires(plan, "pause_once_after_epoch", "paused", epoch):
            time.sleep(float(plan["pause_once_after_epoch"][1]))

    report.real_report = real
    entry._report = report
    try:
        return trial(config)
    finally:
        entry._report = real


def fires(plan: dict, fault: str, marker: str, epoch: int) -> bool:
    """Whether `fault` fires at `epoch` in this trial; if so its marker names the trial."""
    armed = plan.get(fault)
    if armed is None or int(armed[0] if isinstance(armed, list | tuple) else armed) != epoch:
        return False
    from ray import tune

    try:
        with open(Path(plan["dir"]) / marker, "x") as file:  # exclusive: one trial, once
            file.write(f"{tune.get_context().get_trial_id()}\n")
    except FileExistsError:
        return False
    return True


def faulty_search_argv(plan: dict, *args: str) -> list[str]:
    """The command line of run_search.py ARGS whose trials run with the plan's faults."""
    return [sys.executable, str(Path(__file__).resolve()), "search", json.dumps(plan), *args]


def run_faulty_search(plan: dict, argv: list[str]) -> None:
    """run_search.py as its command runs (exit codes, Ctrl-C), its trials with the plan's faults."""
    import runpy

    import tuner.search

    ship_by_value()
    tuner.search.wrapped_trainable = faulty(tuner.search.wrapped_trainable, plan)
    sys.argv = [str(REPO / "run_search.py"), *argv]
    runpy.run_path(str(REPO / "run_search.py"), run_name="__main__")


def stalling_train(marker: str, stall_epoch: int, argv: list[str]) -> None:
    """`python -m trainable argv`, except that writing the epoch-`stall_epoch` checkpoint stops
    half-way: half the bytes are written and flushed to the temporary file, `marker` gets this
    pid and the temporary file's name, and the process sleeps until the test kills it."""
    import runpy

    import torch

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == stall_epoch and hasattr(f, "fileno"):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            tmp = os.readlink(f"/proc/self/fd/{f.fileno()}") if os.path.exists("/proc/self/fd") else "?"
            Path(marker + ".tmp").write_text(f"{os.getpid()} {tmp}\n")
            os.replace(marker + ".tmp", marker)
            time.sleep(600)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
    sys.argv = ["python -m trainable", *argv]
    runpy.run_module("trainable", run_name="__main__", alter_sys=True)


def main(argv: list[str]) -> None:
    if argv[:1] == ["search"] and len(argv) >= 2:
        run_faulty_search(json.loads(argv[1]), argv[2:])
    elif argv[:1] == ["stall-train"] and len(argv) >= 3:
        stalling_train(argv[1], int(argv[2]), argv[3:])
    else:
        raise SystemExit("usage: fault_injection.py search PLAN_JSON [args] | stall-train MARKER EPOCH [flags]")


if __name__ == "__main__":
    import fault_injection  # by its name, not __main__: the module Ray ships by value

    fault_injection.main(sys.argv[1:])
