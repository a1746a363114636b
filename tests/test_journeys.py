"""A user's journeys through the README's commands: real processes in a real folder, a small
real image dataset in the seed layout (not --demo), DEFAULT flags except what keeps a run
small (helpers.SMALL, --epochs, --num-samples): --num-workers 4, batch 32, warmup 5,
the default data paths, save dir, storage path, experiment names and MLflow store (and, in
journeys 1-2, the default cache place ~/.cache/croptune under a HOME of the test's own).

1. train twice in a row (the second on a warm image cache), then --resume the first run's
   last.pth to more epochs          test_train_twice_then_resume_the_first_run
2. the image cache damaged between two runs (a cached array truncated): the next run rebuilds
   it or fails with one line        test_a_damaged_image_cache_is_rebuilt_or_one_line
3. search, Ctrl-C after the first checkpoint, the printed --resume command pasted into a shell
   from a path with a space, then the printed export and retrain commands (the exported config
   carries num_workers 4; the trials filled the cache)
                                    test_search_ctrl_c_resume_export_retrain_from_a_path_with_a_space
4. two searches started at the same moment in one folder, fresh and again with an existing store:
   both complete, each with its own experiment, MLflow parent run and trials
                                    test_two_searches_at_once_in_one_folder
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    SMALL,
    assert_ok,
    experiments,
    finish,
    own_lines,
    printed_command,
    progress,
    run_together,
    search_argv,
    search_runs,
    shell,
    start,
    train,
    user_env,
    user_folder,
    wait_for,
    write_seed_dataset,
)

from trainable.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("journey-data")
    write_seed_dataset(root)
    return root


def save_dir_of(stdout: str, folder: Path) -> Path:
    """The save dir a finished `python -m trainable` names in its last line."""
    found = re.findall(r"checkpoints in (.+)$", stdout, flags=re.MULTILINE)
    assert found, stdout[-2000:]
    path = Path(found[-1].strip())
    return path if path.is_absolute() else folder / path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_files(cache: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted((cache / "images").glob("*.npy"))}


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> dict:
    """Journey 1 in a user's folder: the same command twice, then --resume of the first run."""
    folder = user_folder(dataset, tmp_path_factory.mktemp("train-journey") / "user")
    home = folder.parent / "home"  # no $CROPTUNE_CACHE_DIR: the cache at its default place
    cache, env = home / ".cache" / "croptune", user_env(home=home)
    first = train(folder, env, *SMALL, "--epochs", "2")
    assert_ok(first, "first `python -m trainable`")
    first_dir = save_dir_of(first.stdout, folder)
    first_last, cached = digest(first_dir / "last.pth"), cache_files(cache)
    second = train(folder, env, *SMALL, "--epochs", "2")
    return {"folder": folder, "cache": cache, "env": env, "first": first, "first_dir": first_dir,
            "first_last": first_last, "cached": cached, "second": second,
            "first_last_after_second": digest(first_dir / "last.pth")}


def test_train_twice_then_resume_the_first_run(trained):
    folder, first_dir, second = trained["folder"], trained["first_dir"], trained["second"]
    assert trained["cached"], "the first run left no decoded arrays in the cache"
    assert_ok(second, "the same command again (warm cache, --num-workers 4)")
    assert "Epoch 2/2" in second.stdout
    # the default save dir holds the first run: the second moves on to its own
    assert save_dir_of(second.stdout, folder) != first_dir and "holds an earlier run" in second.stdout
    # the warm path was taken: the cached arrays were read, not decoded again
    assert cache_files(trained["cache"]) == trained["cached"]

    resumed = train(folder, trained["env"], "--resume", str(first_dir / "last.pth"), "--epochs", "3")
    assert_ok(resumed, "--resume of the first run's last.pth to 3 epochs")
    assert "Epoch 3/3" in resumed.stdout and "Epoch 1/3" not in resumed.stdout and "Epoch 2/3" not in resumed.stdout
    state = load_checkpoint(save_dir_of(resumed.stdout, folder) / "last.pth")
    assert state["epoch"] == 3 and state["config"]["epochs"] == 3 and state["config"]["num_workers"] == 4
    # checked last, so that a failure here does not hide the resume's
    assert trained["first_last_after_second"] == trained["first_last"], \
        "the second run overwrote the first run's checkpoints (same default save dir)"


def test_a_damaged_image_cache_is_rebuilt(trained):
    assert_ok(trained["first"], "the first run")
    arrays = sorted((trained["cache"] / "images").glob("train-*.npy"))
    assert arrays, "no cached train array"
    whole = np.load(arrays[0], mmap_mode="r").shape
    size = arrays[0].stat().st_size
    for cut in (size // 2, 0):  # a copy cut short; a file emptied by a full disk
        with open(arrays[0], "r+b") as f:
            f.truncate(cut)
        again = train(trained["folder"], trained["env"], *SMALL, "--epochs", "1")
        assert again.returncode == 0, f"cut to {cut} bytes: exit {again.returncode}\n{again.stderr[-3000:]}"
        assert "Traceback" not in again.stderr and "Epoch 1/1" in again.stdout
        assert np.load(arrays[0], mmap_mode="r").shape == whole, f"cut to {cut} bytes: not rebuilt"


def first_checkpoint(folder: Path) -> bool:
    return any(folder.glob("ray_results/*/*/checkpoint_*/checkpoint.pth"))


def test_search_ctrl_c_resume_export_retrain_from_a_path_with_a_space(dataset, tmp_path):
    folder = user_folder(dataset, tmp_path / "my searches" / "crop disease")
    env = user_env(tmp_path / "cache")
    # 3 trials one at a time (one worker, reused): 5 epochs are still to come at the first checkpoint
    argv = search_argv(*SMALL, "--epochs", "2", "--num-samples", "3", "--max-concurrent", "1")
    proc, out, err = start(argv, folder, env, "search")
    wait_for(lambda: first_checkpoint(folder), 400, "the first trial checkpoint", proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals its foreground process group
    code = finish(proc, 300)
    stdout = out.read_text()
    assert code == 130, f"exit {code}\n{stdout[-2000:]}\n{err.read_text()[-3000:]}"
    (experiment,) = experiments(folder)
    assert not (experiment / "search_summary.json").exists()

    resume_line = printed_command(stdout, "python run_search.py --resume")
    resumed = shell(resume_line, folder, env)  # pasted as printed
    assert_ok(resumed, f"the printed `{resume_line}`")
    assert "Resuming" in resumed.stdout
    summary = json.loads((experiment / "search_summary.json").read_text())
    assert summary["num_trials"] == 3 and summary["num_failed"] == 0

    export_line = printed_command(resumed.stdout, "python run_search.py export")
    exported = shell(export_line, folder, env, timeout=120)
    assert_ok(exported, f"the printed `{export_line}`")
    best = folder / "best.yaml"
    assert "num_workers: 4" in best.read_text()  # the user's default, carried into the retrain

    retrain_line = printed_command(exported.stdout, "python run_search.py retrain")
    retrained = shell(retrain_line, folder, env)
    assert_ok(retrained, f"the printed `{retrain_line}`")
    assert "Epoch 2/2" in retrained.stdout and "done: val acc" in retrained.stdout

    parent, children = search_runs(f"sqlite:///{folder / 'mlflow.db'}", experiment.name)
    assert parent.info.status == "FINISHED"
    (retrain_run,) = children.pop(None)  # nested under the search's parent, no trial id
    assert retrain_run.info.status == "FINISHED" and retrain_run.data.tags["croptune.role"] == "retrain"
    assert sorted(children) == sorted(trial_ids(experiment))


def trial_ids(experiment: Path) -> list[str]:
    """The trial ids of one Tune experiment, read from its trial directories."""
    return [str(progress(d)["trial_id"].iloc[0]) for d in experiment.iterdir()
            if d.is_dir() and (d / "progress.csv").is_file() and not progress(d).empty]


def test_two_searches_at_once_in_one_folder(dataset, tmp_path):
    folder = user_folder(dataset, tmp_path / "user")
    env = user_env(tmp_path / "cache")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    # --max-concurrent 1: one trial worker per search (reused), two drivers and two Rays at once
    argv = search_argv(*SMALL, "--epochs", "1", "--num-samples", "2", "--max-concurrent", "1")
    seen: list[Path] = []
    for round_ in ("a fresh folder", "an existing store"):
        results = run_together([argv, argv], folder, env, timeout=400)
        for code, stdout, stderr in results:
            assert code == 0 and "Traceback" not in own_lines(stderr), \
                f"{round_}: exit {code}\n{stdout[-2000:]}\n{stderr[-3000:]}"
        new = [p for p in experiments(folder) if p not in seen]
        assert len(new) == 2, f"{round_}: two searches, experiment dirs {[p.name for p in new]}"
        seen += new
        trials = {}
        for experiment in new:
            summary = json.loads((experiment / "search_summary.json").read_text())
            assert summary["num_trials"] == 2 and summary["num_failed"] == 0, summary
            trials[experiment.name] = sorted(trial_ids(experiment))
            assert len(trials[experiment.name]) == 2
            parent, children = search_runs(uri, experiment.name)  # exactly one parent run each
            assert parent.info.status == "FINISHED"
            assert sorted(children) == trials[experiment.name], f"{round_}: {experiment.name}'s MLflow trials"
        assert not set.intersection(*(set(t) for t in trials.values()))
