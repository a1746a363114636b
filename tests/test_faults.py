"""What survives what: crashes, interrupts, divergence, interrupted writes and bad input,
with real processes and real signals (bad input: one real process per kind of check, the
other cases through main() in this process), on tiny synthetic data (32 px, test_resnet,
2 epochs).

1. a trial's Ray worker SIGKILLed mid-epoch restarts from its last checkpoint, in the same
   MLflow run, and the search completes      test_worker_killed_mid_epoch_restarts_from_its_checkpoint
2. SIGTERM, then Ctrl-C (SIGINT to the terminal's process group), to `run_search.py`: a clean
   stop each time, and the printed `--resume` command completes the search
                                              test_sigterm_then_ctrl_c_then_resume_completes_the_search
   (the in-process Ctrl-C + resume of tests/test_search_e2e.py checks the Tune side in more detail)
3. a trial whose loss becomes NaN ends as a diverged error; the search goes on
                                              test_diverged_trial_is_marked_and_the_search_goes_on
4. a process killed while writing a checkpoint leaves the previous one loadable
                                              test_kill_mid_checkpoint_write_keeps_the_last_good_one
5. bad input through run_search.py: one line, exit 2, nothing written
                                              test_bad_search_input_is_one_line_exit_2_and_writes_nothing
   (python -m trainable: tests/test_train_cli_bad_input.py; importers: tests/test_importers.py;
   unknown space, stage order, missing data dir, --resume of an unknown name through
   run_search.py: tests/test_search_e2e.py)
6. torch.load only with weights_only=True, YAML only through safe loaders, the MLflow UI on
   127.0.0.1                                  test_*_safe_* below
7. the same search twice gives the same per-trial metrics
                                              test_same_search_twice_gives_the_same_trials
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fault_helpers import (
    REPO,
    finish,
    metric_rows,
    metric_steps,
    progress,
    search_runs,
    start,
    subprocess_env,
    trial_dir,
    tune_trials,
    wait_for,
)
from test_search_e2e import EPOCHS, tiny_flags
from test_train_cli_bad_input import corrupt_first_image, delete_first_image, edit_train_csv, replace_row

import search_spaces
from trainable.config import TrainConfig
from trainable.data.demo.dataset import layout_paths, write_synthetic_dataset
from trainable.errors import UserError
from trainable.train.checkpoint import load_checkpoint
from trainable.tune_entry import CHECKPOINT_FILE, FAULT_DIR_ENV
from tuner.experiment import BASE_CONFIG_FILE, META_FILE, SUMMARY_FILE, load_study

RUN_SEARCH = str(REPO / "run_search.py")
LINUX_ONLY = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
DIVERGING_LR = 1e12  # AdamW with this LR makes the training loss NaN within the first epoch


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults-data")
    return write_synthetic_dataset(root / "data", seed=0, max_per_class=6, min_per_class=2, val_per_class=1,
                                   image_size=32)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def json_file(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


# ======================================================================== 6. safety
def python_sources() -> list[Path]:
    skip = {"ray_results", "results", "build", "dist", "node_modules", "__pycache__"}
    files = [p for p in REPO.rglob("*.py")
             if not any(part.startswith(".") or part in skip for part in p.relative_to(REPO).parts[:-1])]
    assert len(files) > 20 and REPO / "trainable" / "checkpoint.py" in files
    return files


def calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), {k.arg: k.value for k in node.keywords}, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "yaml", "pickle"):
            for alias in node.names:
                if alias.name in ("load", "load_all", "unsafe_load", "full_load"):
                    yield f"from {node.module} import {alias.name}", {}, node.lineno


def is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_safe_torch_load_every_call_passes_weights_only_true():
    loads, bad = 0, []
    for path in python_sources():
        for name, keywords, line in calls(path):
            where = f"{path.relative_to(REPO)}:{line}: {name}"
            if name == "from torch import load":
                bad.append(where)
            elif name == "torch.load" or name.endswith(("timm.models.load_state_dict", "timm.models.load_checkpoint")):
                loads += 1
                if not is_true(keywords.get("weights_only")):
                    bad.append(where + " without weights_only=True")
            elif "weights_only" in keywords and not is_true(keywords["weights_only"]):
                bad.append(where + " with weights_only not True")
    assert loads >= 2, "the scan found no torch.load: is it looking at the right tree?"
    assert not bad, "\n".join(bad)


def test_safe_yaml_and_numpy_loading_only():
    unsafe = {"yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load",
              "yaml.full_load_all", "from yaml import load", "from yaml import unsafe_load",
              "from yaml import full_load", "from yaml import load_all"}
    safe_loads, bad = 0, []
    for path in python_sources():
        for name, keywords, line in calls(path):
            where = f"{path.relative_to(REPO)}:{line}: {name}"
            safe_loads += name == "yaml.safe_load"
            if name in unsafe:
                bad.append(where)
            loader = keywords.get("Loader")
            if loader is not None and "Safe" not in ast.unparse(loader):
                bad.append(where + f" with Loader={ast.unparse(loader)}")
            if name.endswith("np.load") and is_true(keywords.get("allow_pickle")):
                bad.append(where + " with allow_pickle=True")
    assert safe_loads >= 3
    assert not bad, "\n".join(bad)


@LINUX_ONLY
def test_safe_mlflow_ui_listens_on_loopback_only(mlflow_server):
    """The session's MLflow UI (conftest: `ui` with no --host, the way users start it) listens on
    127.0.0.1 only, as the kernel's socket table says."""
    assert listening(mlflow_server["port"]) == {"127.0.0.1"}


def listening(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on `port` (Linux /proc/net)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(_address(address, width))
    return found


def _address(hex_address: str, width: int) -> str:
    import ipaddress

    raw = bytes.fromhex(hex_address)
    # /proc/net writes each 32-bit word in host (little-endian) order
    ordered = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(ordered)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


# ======================================================================== 5. bad input, run_search.py
def _a_file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("a file where a directory should be")
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _symlinked_row(root: Path, tmp: Path) -> None:
    """A row naming a file inside train/ that is a symlink to a file outside the data root."""
    outside = _write(tmp / "secret.txt", "outside the data root")
    (Path(layout_paths(root)["train_dir"]) / "leaf.png").symlink_to(outside)
    edit_train_csv(root, lambda lines: replace_row(lines, "image", "leaf.png"))


def _not_a_resumable_search(storage: Path) -> list[str]:
    (storage / "stray").mkdir(parents=True)
    (storage / "stray" / "notes.txt").write_text("not a search")
    return ["--resume", "stray", "--storage-path", str(storage)]


BAD_SEARCH_INPUT = {
    "corrupt image": (lambda root, tmp: corrupt_first_image(root), "cannot be decoded"),
    "missing image file": (lambda root, tmp: delete_first_image(root), "not found"),
    "csv without the label column": (
        lambda root, tmp: edit_train_csv(root, lambda ls: [ls[0].replace("label_61", "label"), *ls[1:]]), "label_61"),
    "label outside 0..60": (lambda root, tmp: edit_train_csv(root, lambda ls: replace_row(ls, "label_61", "75")), "75"),
    "relative path escaping the data root": (
        lambda root, tmp: edit_train_csv(root, lambda ls: replace_row(ls, "image", "../../etc/passwd")), "stay inside"),
    "absolute path outside the data root": (
        lambda root, tmp: edit_train_csv(root, lambda ls: replace_row(ls, "image", "/etc/passwd")), "stay inside"),
    "symlink out of the data root": (lambda root, tmp: _symlinked_row(root, tmp), "stay inside"),
    "malformed space yaml": (
        lambda root, tmp: ["--space", str(_write(tmp / "space.yaml", "lr: {type: float, low: 1\n"))], "not valid YAML"),
    "unknown backbone": (lambda root, tmp: ["--backbone", "resnet_does_not_exist"], "unknown --backbone"),
    "unwritable storage path": (
        lambda root, tmp: ["--storage-path", str(_a_file(tmp) / "results")], "not a writable directory"),
    "unreachable mlflow server": (
        lambda root, tmp: ["--mlflow-uri", f"http://127.0.0.1:{free_port()}"], "cannot reach the MLflow tracking server"),
    "mlflow database that is not one": (
        lambda root, tmp: ["--mlflow-uri", f"sqlite:///{_write(tmp / 'notes.db', 'plain text')}"],
        "is not an SQLite database"),
    "pretrained weights file that is not a checkpoint": (
        lambda root, tmp: ["--pretrained", "--pretrained-path", str(_write(tmp / "weights.pth", "not a checkpoint"))],
        "not a readable weights file"),
    "pretrained weights unavailable offline": (
        lambda root, tmp: ["--pretrained", "--backbone", "resnet18"], "--pretrained-path"),
    "--resume of a directory that is not a search": (None, "is not a croptune search"),
    "--cpus-per-trial beyond this machine": (lambda root, tmp: ["--cpus-per-trial", "100000"], "this machine has only"),
    "empty --name": (lambda root, tmp: ["--name", ""], "--name '': the name is empty"),
}


# Run as the real command (a warning at import or a traceback would be a second line of the
# terminal's stderr): one case per place a check runs (the data decoded on the driver, the model
# check's child process, the tracking preflight). The others call run_search.py's main() in this
# process as the command does (run_cli): the same checks without a fresh interpreter each.
OWN_PROCESS = {"corrupt image", "unknown backbone", "pretrained weights unavailable offline",
               "unreachable mlflow server"}


@pytest.mark.parametrize("case", sorted(BAD_SEARCH_INPUT))
def test_bad_search_input_is_one_line_exit_2_and_writes_nothing(case, dataset, tmp_path, monkeypatch,
                                                                bad_search):
    import shutil

    root = shutil.copytree(dataset, tmp_path / "data")
    cwd = tmp_path / "cwd"  # the default MLflow store would be cwd/mlflow.db
    cwd.mkdir()
    storage, cache = cwd / "results", tmp_path / "cache"
    make, words = BAD_SEARCH_INPUT[case]
    if make is None:
        argv = _not_a_resumable_search(storage)
    else:
        argv = tiny_flags(root, storage, "bad") + (make(root, tmp_path) or [])
    before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
    if case in OWN_PROCESS:
        proc = subprocess.run([sys.executable, RUN_SEARCH, *argv], cwd=cwd, capture_output=True, text=True,
                              env=subprocess_env(CROPTUNE_CACHE_DIR=cache), timeout=240)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        monkeypatch.setenv("CROPTUNE_CACHE_DIR", str(cache))
        code, stdout, stderr = bad_search(argv, cwd)
    assert code == 2, (stdout[-2000:], stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], stderr
    assert "Traceback" not in stdout + stderr
    assert sorted(p.relative_to(cwd) for p in cwd.rglob("*")) == before  # no experiment dir, no mlflow.db
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no decoded-image cache either


def test_unreachable_address_is_one_line_within_seconds(dataset, tmp_path, monkeypatch, cli_in_process):
    """--address where nothing listens: ray.init would retry for minutes; the search says so at once
    (the real connect() runs here, after all the other checks)."""
    import time

    import tuner.search

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, stdout, stderr = cli_in_process(tuner.search.main, tiny_flags(dataset, cwd / "results", "addr")
                                          + ["--address", address])
    assert time.monotonic() - started < 60  # Ray's own retries took minutes
    assert code == 2, (stdout[-2000:], stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --address {address}: no Ray cluster listens there")
    assert "`ray start --head`" in lines[0]
    assert not (cwd / "results").exists() and not (cwd / "mlflow.db").exists()


# ======================================================================== 4. interrupted write
def train_flags(root: Path, save_dir: Path) -> list[str]:
    flags = []
    for key, value in layout_paths(root).items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags + ["--backbone", "test_resnet", "--no-pretrained", "--image-size", "32",
                    "--progressive-image-size", "32", "--epochs", "2", "--num-workers", "0", "--device", "cpu",
                    "--save-dir", str(save_dir)]


@LINUX_ONLY
def test_kill_mid_checkpoint_write_keeps_the_last_good_one(dataset, tmp_path, capsys):
    """`python -m trainable` SIGKILLed half-way through writing epoch 2's last.pth (the bytes are on
    disk, in the temporary file): last.pth is still epoch 1's, whole, and --resume continues from it."""
    save, marker = tmp_path / "save", tmp_path / "stalled"
    env = subprocess_env(CROPTUNE_CACHE_DIR=tmp_path / "cache")
    argv = [sys.executable, str(REPO / "tests" / "fault_helpers.py"), "stall-train", str(marker), "2",
            *train_flags(dataset, save)]
    proc, out, err = start(argv, tmp_path, env, "train")
    wait_for(marker.is_file, 300, "the epoch-2 checkpoint write to stall", proc)
    pid, partial = marker.read_text().split()
    assert int(pid) == proc.pid and Path(partial).parent == save and Path(partial).stat().st_size > 0
    os.kill(proc.pid, signal.SIGKILL)
    assert finish(proc, 60) == -signal.SIGKILL
    assert "Epoch 2/2" in out.read_text()  # it was killed after training epoch 2, while saving it

    assert load_checkpoint(save / "last.pth")["epoch"] == 1  # the previous checkpoint, whole
    assert Path(partial).is_file()  # the interrupted write: never renamed over last.pth
    with pytest.raises(UserError, match="not a croptune checkpoint"):
        load_checkpoint(partial)

    # `python -m trainable --resume save/last.pth`, in this process (torch is already imported here)
    from trainable.cli import main as train_main
    from trainable.errors import run_cli

    capsys.readouterr()
    assert run_cli(train_main, ["--resume", str(save / "last.pth")]) == 0
    resumed = capsys.readouterr().out
    assert "Epoch 2/2" in resumed and "Epoch 1/2" not in resumed
    assert load_checkpoint(save / "last.pth")["epoch"] == 2
    assert not Path(partial).exists()  # the next save of last.pth removed the dead write's leftover


# ======================================================================== 2. SIGTERM / Ctrl-C
def paused_trial(faults: Path, experiment: Path) -> str | None:
    """The trial the pause hook holds, once its epoch-1 report is on disk."""
    marker = faults / "paused"
    if not marker.is_file() or not marker.read_text().strip():
        return None
    trial_id = marker.read_text().strip()
    with contextlib.suppress(AssertionError, FileNotFoundError):
        if len(progress(trial_dir(experiment, trial_id))) >= 1:
            return trial_id
    return None


def resume_argv(stdout: str) -> list[str]:
    """The command the interrupted search printed, runnable here."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip().startswith("python run_search.py --resume")]
    assert len(lines) == 1, stdout[-3000:]
    argv = shlex.split(lines[0])
    return [sys.executable, RUN_SEARCH, *argv[2:]]


def check_clean_stop(proc, out: Path, err: Path, storage: Path, uri: str, paused: str) -> list[str]:
    assert finish(proc, 300) == 130, err.read_text()[-3000:]
    stdout = out.read_text()
    argv = resume_argv(stdout)
    assert argv[2:] == ["--resume", "sig", "--storage-path", str(storage), "--mlflow-uri", uri]
    experiment = storage / "sig"
    assert not (experiment / SUMMARY_FILE).exists()
    # the interrupted trial is checkpointed: its epoch-1 checkpoint is whole
    (saved,) = sorted(trial_dir(experiment, paused).glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
    assert load_checkpoint(saved)["epoch"] == 1
    parent, children = search_runs(uri, "sig")
    assert parent.info.status == "KILLED"
    (child,) = children[paused]
    assert child.info.status == "KILLED" and child.data.tags.get("interrupted") == "true"
    return argv


def test_sigterm_then_ctrl_c_then_resume_completes_the_search(dataset, tmp_path):
    storage, faults = tmp_path / "results", tmp_path / "faults"
    faults.mkdir()
    experiment, uri = storage / "sig", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = subprocess_env(CROPTUNE_CACHE_DIR=tmp_path / "cache", **{FAULT_DIR_ENV: faults})
    (faults / "pause_once_after_epoch").write_text("1 300")  # the first trial to report epoch 1 waits

    # session 1: `kill PID` (SIGTERM) while the first trial is between its epochs 1 and 2
    # --grace-period = --epochs: no rung pauses the first trial at epoch 1 (cutting its wait short)
    argv = [sys.executable, RUN_SEARCH, *tiny_flags(dataset, storage, "sig"), "--num-samples", "2",
            "--max-concurrent", "1", "--grace-period", str(EPOCHS), "--mlflow-uri", uri]
    proc, out, err = start(argv, tmp_path, env, "session1")
    wait_for(lambda: paused_trial(faults, experiment), 300, "the first trial's epoch 1", proc)
    first = paused_trial(faults, experiment)
    proc.send_signal(signal.SIGTERM)
    argv = check_clean_stop(proc, out, err, storage, uri, first)
    parent_id = search_runs(uri, "sig")[0].info.run_id

    # session 2, the printed command: the first trial finishes from its checkpoint, the second
    # (proposed by the restored searcher) reports epoch 1 and pauses: Ctrl-C, i.e. SIGINT to
    # the terminal's foreground process group
    (faults / "paused").unlink()
    proc, out, err = start(argv, tmp_path, env, "session2")
    wait_for(lambda: paused_trial(faults, experiment), 300, "the second trial's epoch 1", proc)
    second = paused_trial(faults, experiment)
    assert second != first
    os.killpg(proc.pid, signal.SIGINT)
    assert check_clean_stop(proc, out, err, storage, uri, second) == argv
    assert [row["epoch"] for row in metric_rows(trial_dir(experiment, first))] == [1, 2]

    # session 3: runs to the end
    (faults / "paused").unlink()
    (faults / "pause_once_after_epoch").unlink()
    proc, out, err = start(argv, tmp_path, env, "session3")
    assert finish(proc, 300) == 0, err.read_text()[-3000:]
    assert "Resuming" in out.read_text()
    summary = json_file(experiment / SUMMARY_FILE)
    assert summary["num_trials"] == 2 and summary["num_failed"] == 0
    trials = tune_trials(experiment)
    assert [t.trial_id for t in trials] == [first, second]
    for trial in trials:  # each epoch ran once: nothing finished was rerun, nothing restarted from 0
        assert [row["epoch"] for row in metric_rows(trial_dir(experiment, trial.trial_id))] == [1, 2]
    # one Optuna history across the three sessions: the seed recipe first, then the proposal
    # the restored searcher made in session 2
    study = load_study(experiment)
    assert [t.number for t in study.trials] == [0, 1]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    base = TrainConfig.from_dict(json_file(experiment / BASE_CONFIG_FILE))
    assert study.trials[0].params == search_spaces.seed_defaults(base, "stage_epochs")
    for ot_trial, tune_trial in zip(study.trials, trials, strict=True):
        overrides = search_spaces.overrides_from_params("stage_epochs", ot_trial.params, base)
        assert {k: tune_trial.config[k] for k in overrides} == overrides
    assert [s["outcome"] for s in json_file(experiment / META_FILE)["sessions"]] == \
        ["interrupted", "interrupted", "finished"]
    # MLflow: the same parent run, reopened and finished; one child run per trial, no epoch twice
    parent, children = search_runs(uri, "sig")
    assert parent.info.run_id == parent_id and parent.info.status == "FINISHED"
    assert sorted(children) == sorted([first, second])
    for runs in children.values():
        (run,) = runs
        assert run.info.status == "FINISHED"
        assert metric_steps(uri, run.info.run_id) == [1, 2]


# ======================================================================== in-process searches (1, 3, 7)
@pytest.fixture(scope="module")
def ray_env(tmp_path_factory):
    """One small Ray session for the in-process searches; its workers see the fault-hook dir."""
    import ray

    faults = tmp_path_factory.mktemp("fault-hooks")
    saved = {k: os.environ.get(k) for k in (FAULT_DIR_ENV, "CROPTUNE_CACHE_DIR")}
    # before ray.init: workers inherit the environment; the driver decodes into this cache
    os.environ[FAULT_DIR_ENV] = str(faults)
    os.environ["CROPTUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("ray-env-cache"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield {"faults": faults}
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def search_in_process(argv: list[str]) -> tuple[int, str]:
    """run_search.py's search in this process (its MLflow hooks included); (exit code, stdout)."""
    from trainable.errors import run_cli
    from tuner.search import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = run_cli(main, argv)
    return code, buffer.getvalue()


@pytest.fixture(scope="module")
def twin_searches(dataset, ray_env, tmp_path_factory):
    """The same 2-trial search twice, trials one at a time."""
    runs = []
    for index in range(2):
        storage = tmp_path_factory.mktemp(f"twin{index}") / "results"
        code, out = search_in_process(tiny_flags(dataset, storage, "twin") + [
            "--num-samples", "2", "--max-concurrent", "1", "--seed", "7", "--no-mlflow"])
        assert code == 0, out[-3000:]
        runs.append(storage / "twin")
    return runs


def test_same_search_twice_gives_the_same_trials(twin_searches):
    first, second = ([(t.config, metric_rows(trial_dir(exp, t.trial_id))) for t in tune_trials(exp)]
                     for exp in twin_searches)
    assert len(first) == 2 and all(rows for _, rows in first)
    assert first == second  # same proposals, same metrics epoch by epoch (exactly)
    summaries = [json_file(exp / SUMMARY_FILE) for exp in twin_searches]
    assert summaries[0]["best_value"] == summaries[1]["best_value"]


@pytest.fixture(scope="module")
def faulty_search(dataset, ray_env, tmp_path_factory):
    """One search with both faults: its first trial (the seed point, lr 1e12) diverges; the
    second trial's worker is SIGKILLed once it has trained epoch 2, before that epoch is saved."""
    base = tmp_path_factory.mktemp("faulty")
    storage, faults, uri = base / "results", ray_env["faults"], f"sqlite:///{base / 'mlflow.db'}"
    space = _write(base / "diverge.yaml", f"lr: {{type: categorical, choices: [{DIVERGING_LR:.1e}, 5.0e-4]}}\n")
    (faults / "hold_once_before_report").write_text("2 300")
    killed: dict = {}

    def kill_the_held_worker():
        try:
            wait_for((faults / "held_pid").is_file, 600, "a trial to finish training epoch 2")
            killed.update(pid=int((faults / "held_pid").read_text()), trial=(faults / "held").read_text().strip())
            os.kill(killed["pid"], signal.SIGKILL)
        except BaseException as exc:  # reported by the tests, not lost in the thread
            killed["error"] = exc

    killer = threading.Thread(target=kill_the_held_worker, daemon=True)
    killer.start()
    try:  # --grace-period = --epochs: no rung pause moves the trial to another worker before the kill
        code, out = search_in_process(tiny_flags(dataset, storage, "faulty") + [
            "--space", str(space), "--lr", str(DIVERGING_LR), "--num-samples", "2", "--max-concurrent", "1",
            "--seed", "7", "--max-failures", "1", "--grace-period", str(EPOCHS), "--mlflow-uri", uri])
    finally:
        killer.join(timeout=5)
        (faults / "hold_once_before_report").unlink()
    assert "error" not in killed and "pid" in killed, killed
    assert code == 0, out[-3000:]
    experiment = storage / "faulty"
    return {"experiment": experiment, "uri": uri, "out": out, "killed": killed,
            "trials": {t.trial_id: t for t in tune_trials(experiment)},
            "summary": json_file(experiment / SUMMARY_FILE), "runs": search_runs(uri, "faulty")}


def test_worker_killed_mid_epoch_restarts_from_its_checkpoint(faulty_search, twin_searches):
    experiment, killed = faulty_search["experiment"], faulty_search["killed"]
    trial = faulty_search["trials"][killed["trial"]]
    assert trial.status == "TERMINATED" and trial.num_failures == 1
    rows = progress(trial_dir(experiment, trial.trial_id))
    # epoch 1 once, from the killed worker; epoch 2 once, from a new worker that restored the
    # epoch-1 checkpoint (one iteration since the restore): the lost work is epoch 2's, no more
    assert rows["epoch"].tolist() == [1, 2] and rows["training_iteration"].tolist() == [1, 2]
    assert rows["pid"].tolist()[0] == killed["pid"] != rows["pid"].tolist()[1]
    assert rows["iterations_since_restore"].tolist()[1] == 1
    assert "died" in (trial_dir(experiment, trial.trial_id) / "error.txt").read_text().lower()
    # the restored trial's metrics are exactly those of the same config run without a fault
    # (the first trial of twin_searches is the same seed-recipe config)
    twin = tune_trials(twin_searches[0])[0]
    assert metric_rows(trial_dir(experiment, trial.trial_id)) == metric_rows(trial_dir(twin_searches[0], twin.trial_id))
    # MLflow: the trial's run continued (one run, each epoch logged once, finished)
    parent, children = faulty_search["runs"]
    (run,) = children[trial.trial_id]
    assert run.info.status == "FINISHED" and run.data.tags["num_failures"] == "1"
    assert metric_steps(faulty_search["uri"], run.info.run_id) == [1, 2]
    # every trial accounted for, in Tune, Optuna, MLflow and the summary
    assert faulty_search["summary"]["num_trials"] == len(faulty_search["trials"]) == len(children) == 2
    assert len(load_study(experiment).trials) == 2 and parent.info.status == "FINISHED"


def test_diverged_trial_is_marked_and_the_search_goes_on(faulty_search):
    trials = list(faulty_search["trials"].values())
    diverged, survivor = trials  # creation order: the seed point (lr 1e12) went first
    assert diverged.config["lr"] == DIVERGING_LR and survivor.config["lr"] == 5e-4
    experiment = faulty_search["experiment"]
    # Tune: an error that says diverged; no epoch reported; the retry did not train again
    assert diverged.status == "ERROR"
    error = (trial_dir(experiment, diverged.trial_id) / "error.txt").read_text()
    assert "TrialDiverged: diverged: training loss became nan" in error
    assert progress(trial_dir(experiment, diverged.trial_id)).empty
    # the search went on: the next trial ran all its epochs and is the best
    assert survivor.status == "TERMINATED" and survivor.last_result["epoch"] == EPOCHS
    summary = faulty_search["summary"]
    assert summary["num_failed"] == 1 and summary["best_trial_id"] == survivor.trial_id
    out = faulty_search["out"]
    assert "1 failed (1 diverged)" in out and f"failed trial {diverged.trial_id}: diverged: " in out
    assert [t.state.name for t in load_study(experiment).trials] == ["FAIL", "COMPLETE"]
    # MLflow: the child run failed, tagged diverged
    _, children = faulty_search["runs"]
    (run,) = children[diverged.trial_id]
    assert run.info.status == "FAILED" and run.data.tags["diverged"] == "true"
    assert "diverged" in run.data.tags["error"]


def test_search_where_every_trial_failed_exits_1_without_an_export_hint(dataset, ray_env, tmp_path):
    storage = tmp_path / "results"
    code, out = search_in_process(tiny_flags(dataset, storage, "allfail") + [
        "--lr", str(DIVERGING_LR), "--num-samples", "1", "--max-failures", "0", "--no-mlflow"])
    assert code == 1, out[-3000:]
    assert "nothing to export (all 1 trials failed; their errors are listed below)" in out
    assert "failed trial" in out and "diverged" in out
    assert "Export the best config" not in out and "run_search.py export" not in out
    summary = json_file(storage / "allfail" / SUMMARY_FILE)
    assert summary["num_failed"] == summary["num_trials"] == 1 and summary["best_trial_id"] is None


def test_time_budget_spent_before_any_report_says_so_and_exits_1(dataset, ray_env, tmp_path):
    storage = tmp_path / "results"
    code, out = search_in_process(tiny_flags(dataset, storage, "budget") + [
        "--num-samples", "1", "--grace-period", str(EPOCHS), "--time-budget", "1", "--no-mlflow"])
    # a 1 s budget ends the search before its trial reports an epoch (starting one takes longer)
    assert code == 1, out[-3000:]
    assert "the --time-budget of 1 s ran out before any trial reported its first epoch" in out
    assert "see the trial errors" not in out and "Export the best config" not in out


def test_hold_hook_is_off_without_the_env_var(monkeypatch, tmp_path):
    """The fault hooks cost nothing and fire never in a real search (no CROPTUNE_TEST_FAULT_DIR)."""
    import trainable.tune_entry as te

    monkeypatch.delenv(FAULT_DIR_ENV, raising=False)
    (tmp_path / "hold_once_before_report").write_text("1 300")
    te._maybe_hold(1)  # returns at once
    assert not (tmp_path / "held").exists()

