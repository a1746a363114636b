"""Tracking input checked before Ray starts, printed commands that paste back, and a new SQLite
store created by two drivers at once."""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import subprocess_env, tiny_flags, write_summary

from trainable.data.demo.dataset import write_synthetic_dataset
from trainable.errors import UserError
from tuner import export
from tuner.tracking import store, ui
from tuner.tracking.hooks import MlflowSearchHooks

# One process opening (creating) a store, started together with another by a barrier: each
# imports everything first, says it is ready, and opens the store when the go file appears.
OPEN_STORE = """
import sys, time
from pathlib import Path
from tuner.tracking import store
import mlflow.store.tracking.sqlalchemy_store  # the slow imports, before the start line
uri, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.002)
client = store.client_for(uri)
print(store.ensure_experiment(client, "croptune"))
"""


def test_two_processes_creating_one_new_store_at_once_both_succeed(tmp_path):
    """Without the lock one of them died in MLflow's schema migration ("index ... already exists")."""
    db, go = tmp_path / "mlflow.db", tmp_path / "go"
    uri = f"sqlite:///{db}"
    env = subprocess_env()
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri, str(tmp_path / f"ready{i}"), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in results]
    assert [out.strip() for out, _ in results] == ["1", "1"]  # one experiment, the same for both
    client = store.client_for(uri)
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "croptune"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "mlflow.db", "ready0", "ready1"]  # no lock file


def test_store_lock_times_out_with_one_line(tmp_path):
    db = tmp_path / "mlflow.db"
    with store.store_lock(db), pytest.raises(UserError, match="another process has been creating or opening"):
        # flock locks belong to the open file: a second open in this process waits like another process
        with store.store_lock(db, timeout=0.3):
            pass


# ------------------------------------------------------------------ a search's bad tracking input
@pytest.fixture(scope="module")
def deleted_store(tmp_path_factory) -> Path:
    """An SQLite store holding experiment 'gone', deleted (as `mlflow experiments delete` leaves it)."""
    db = tmp_path_factory.mktemp("deleted-store") / "mlflow.db"
    client = store.client_for(f"sqlite:///{db}")
    client.delete_experiment(store.ensure_experiment(client, "gone"))
    return db


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("preflight-data")
    return write_synthetic_dataset(root / "data", seed=0, max_per_class=6, min_per_class=2, val_per_class=1,
                                   image_size=32)


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


BAD_TRACKING = {  # case: (flags, environment, words of the one error line)
    "deleted experiment": (["--mlflow-uri", "sqlite:///{store}", "--mlflow-experiment", "gone"], {},
                           "is deleted in sqlite:///"),
    "empty experiment name": (["--mlflow-experiment", ""], {}, "--mlflow-experiment is empty"),
    "empty tracking uri": (["--mlflow-uri", " "], {}, "--mlflow-uri is empty"),
    "garbage MLFLOW_TRACKING_URI": ([], {"MLFLOW_TRACKING_URI": "garbage"},
                                    "came from the environment variable MLFLOW_TRACKING_URI=garbage"),
    "MLFLOW_TRACKING_URI in a missing directory": (
        [], {"MLFLOW_TRACKING_URI": "sqlite:////nonexistent/dir/m.db"}, "environment variable MLFLOW_TRACKING_URI"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRACKING))
def test_bad_tracking_input_is_one_line_before_ray_and_writes_nothing(case, dataset, deleted_store, tmp_path,
                                                                       monkeypatch, bad_search):
    flags, env, words = BAD_TRACKING[case]
    cwd = tmp_path / "cwd"  # the default store would be cwd/mlflow.db
    cwd.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = tiny_flags(dataset, cwd / "results", "bad") + [f.format(store=deleted_store) for f in flags]
    store_before = _digest(deleted_store.parent)
    code, stdout, stderr = bad_search(argv, cwd)
    assert code == 2, (stdout[-2000:], stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], stderr
    assert not any(cwd.iterdir())
    assert _digest(deleted_store.parent) == store_before  # the check only read the store


def test_deleted_experiment_message_says_how_to_restore(deleted_store):
    uri = f"sqlite:///{deleted_store}"
    with pytest.raises(UserError) as caught:
        store.preflight_experiment(uri, "gone")
    message = str(caught.value)
    command = message.split("`")[1]  # the restore command, pasteable
    assert shlex.split(command)[:4] == [f"MLFLOW_TRACKING_URI={uri}", "mlflow", "experiments", "restore"]
    assert "choose another --mlflow-experiment" in message
    store.preflight_experiment(uri, "never-made")  # absent: created later, not refused
    store.preflight_experiment(f"sqlite:///{deleted_store.parent / 'new.db'}", "gone")  # no store yet
    assert not (deleted_store.parent / "new.db").exists()


def test_env_uri_named_only_when_it_is_the_one_in_use(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////nonexistent/env.db")
    uri = store.resolve_tracking_uri(None)
    with pytest.raises(UserError, match="environment variable MLFLOW_TRACKING_URI"):
        store.preflight(uri)
    with pytest.raises(UserError) as caught:  # a flag given: the flag's URI, no word of the variable
        store.preflight(uri, requested="sqlite:////nonexistent/env.db")
    assert "MLFLOW_TRACKING_URI" not in str(caught.value)


# ------------------------------------------------------------------ ui and export
@pytest.mark.parametrize("argv, words", [
    (["--port", "99999"], "--port 99999: must be a TCP port, 1..65535"),
    (["--port", "-1"], "--port -1: must be a TCP port"),
    (["--port", "0"], "--port 0: must be a TCP port"),
    (["--start-timeout", "0"], "--start-timeout 0: must be a positive number"),
    (["--start-timeout", "nan"], "--start-timeout nan: must be a positive number"),
    (["--mlflow-experiment", ""], "--mlflow-experiment is empty"),
    (["--mlflow-uri", ""], "--mlflow-uri is empty"),
])
def test_bad_ui_input_is_one_line_exit_2_and_writes_nothing(argv, words, tmp_path, monkeypatch, cli_in_process):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, stdout, stderr = cli_in_process(ui.main, argv)
    assert code == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], stderr
    assert stdout == "" and not any(tmp_path.iterdir())


@pytest.mark.parametrize("parser, argv", [
    (ui.build_parser, ["--po", "5001"]),
    (export.build_parser, ["--exp", "name"]),
    (export.build_parser, ["--experiment", "name", "--storage", "elsewhere"]),
])
def test_abbreviated_flags_are_refused(parser, argv, capsys):
    with pytest.raises(SystemExit) as caught:
        parser().parse_args(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err or "required: --experiment" in err, err


def test_printed_commands_paste_back_with_spaces_in_paths(tmp_path, capsys):
    from tuner.search import resume_command

    uri = f"sqlite:///{tmp_path / 'my runs' / 'mlflow.db'}"
    line = ui.where_to_look(uri, "1")
    assert shlex.split(line.split("`")[1]) == ["python", "run_search.py", "ui", "--mlflow-uri", uri]

    hook = MlflowSearchHooks(None, "my experiment")
    hook.uri = uri
    settings = SimpleNamespace(name="a b", storage_path=str(tmp_path / "ray results"))
    assert shlex.split(resume_command(settings, [hook]))[2:] == [
        "--resume", "a b", "--storage-path", settings.storage_path, "--mlflow-uri", uri,
        "--mlflow-experiment", "my experiment"]


    write_summary(tmp_path / "ray results")
    out = tmp_path / "out dir" / "best.yaml"
    assert export.main(["--experiment", "stage_epochs-1", "--storage-path", str(tmp_path / "ray results"),
                        "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split("retrain with: ")[1].strip()
    assert shlex.split(printed) == ["python", "run_search.py", "retrain", "--config", str(out)]


@pytest.mark.parametrize("flags, words", [
    (["--mlflow-uri", "sqlite:///{store}", "--mlflow-experiment", "gone"], "is deleted in sqlite:///"),
    (["--mlflow-experiment", ""], "--mlflow-experiment is empty"),
])
def test_retrain_refuses_the_same_tracking_input_before_training(flags, words, deleted_store, tmp_path,
                                                                   monkeypatch, cli_in_process):
    from trainable.config import TrainConfig
    from tuner import retrain

    config = tmp_path / "best.yaml"
    export.write_config(config, TrainConfig(demo=True).validate(), header=["test"])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = ["--config", str(config), "--save-dir", str(cwd / "run"), *[f.format(store=deleted_store) for f in flags]]
    code, stdout, stderr = cli_in_process(retrain.main, argv)
    assert code == 2, (stdout[-2000:], stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], stderr
    assert not any(cwd.iterdir())
