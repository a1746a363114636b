"""Tracking pieces that need no server: URIs, preflight of local stores, URLs, figures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from trainable.errors import UserError
from tuner.tracking import store
from tuner.tracking.artifacts import confusion_figure, learning_curves, metric_vs_epoch
from tuner.tracking.callback import _numeric
from tuner.tracking.runs import finish_parent_run, start_parent_run
from tuner.tracking.ui import runs_url, where_to_look

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_default_uri_is_an_absolute_sqlite_file(tmp_path):
    assert store.resolve_tracking_uri(None, cwd=tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"


def test_env_uri_is_respected(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert store.resolve_tracking_uri(None, cwd=tmp_path) == "http://tracking:5000"
    assert store.resolve_tracking_uri("sqlite:///x.db", cwd=tmp_path) == f"sqlite:///{tmp_path}/x.db"


@pytest.mark.parametrize("given,expected", [
    ("sqlite:///runs/m.db", "sqlite:///{cwd}/runs/m.db"),
    ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
    ("sqlite:///m.db?timeout=30", "sqlite:///{cwd}/m.db?timeout=30"),
    ("store.db", "sqlite:///{cwd}/store.db"),
    ("mlruns", "file://{cwd}/mlruns"),
    ("https://mlflow.example.com", "https://mlflow.example.com"),
])
def test_relative_paths_become_absolute(tmp_path, given, expected):
    assert store.resolve_tracking_uri(given, cwd=tmp_path) == expected.format(cwd=tmp_path)


def test_preflight_sqlite_ok_new_and_existing(tmp_path):
    store.preflight(f"sqlite:///{tmp_path}/new.db")
    import sqlite3

    sqlite3.connect(tmp_path / "old.db").execute("create table t(x)").connection.commit()
    store.preflight(f"sqlite:///{tmp_path}/old.db")


@pytest.mark.parametrize("make,message", [
    (lambda p: f"sqlite:///{p}/missing/m.db", "directory .*missing does not exist"),
    (lambda p: f"sqlite:///{p}", "is a directory"),
    (lambda p: (Path(p, "notdb.db").write_text("hello"), f"sqlite:///{p}/notdb.db")[1],
     "exists but is not an SQLite database"),
    (lambda p: "sqlite://", "give a database file"),
    (lambda p: "sqlite:///:memory:", "give a database file"),
    (lambda p: f"file://{p}/mlruns", "refuses the plain file store"),
    (lambda p: "ftp://host/x", "unsupported scheme 'ftp'"),
])
def test_preflight_sqlite_and_scheme_errors(tmp_path, make, message):
    with pytest.raises(UserError, match=message) as info:
        store.preflight(make(tmp_path))
    assert "\n" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_preflight_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(UserError, match="not writable"):
        store.preflight(f"sqlite:///{locked}/m.db")


def test_preflight_unresolvable_host_is_quick():
    start = time.monotonic()
    with pytest.raises(UserError, match="cannot reach the MLflow tracking server"):
        store.preflight("http://no-such-host.invalid:5000", timeout=2)
    assert time.monotonic() - start < 10


def test_runs_url():
    assert runs_url("http://127.0.0.1:5000/", "3") == \
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    assert runs_url("http://h:1", "3", "abc") == \
        "http://h:1/#/experiments/3/runs/abc?workflowType=machine_learning"


def test_where_to_look(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = store.resolve_tracking_uri(None)
    assert where_to_look(default, "1", "r") == (
        "MLflow: run `python run_search.py ui` then open "
        "http://127.0.0.1:5000/#/experiments/1/runs/r?workflowType=machine_learning")
    assert "--mlflow-uri sqlite:////x/y.db" in where_to_look("sqlite:////x/y.db", "1")
    assert where_to_look("http://srv:80", "2").startswith("MLflow: http://srv:80/#/experiments/2/")


def test_importing_tracking_is_light():
    """`run_search.py --help` / `ui` must not pay for Ray, mlflow or matplotlib."""
    code = ("import sys, tuner.tracking.store, tuner.tracking.runs, tuner.tracking.ui, tuner.tracking.hooks; "
            "print(sorted(m for m in ('ray', 'mlflow', 'matplotlib', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_numeric_metrics_drop_ray_bookkeeping_and_non_finite():
    result = {"epoch": 2, "macro_f1": 0.5, "val_loss": float("nan"), "lr": 1e-3, "stage": 2,
              "done": False, "timestamp": 1, "trial_id": "x", "config": {"lr": 1}, "time_total_s": 3.0,
              "training_iteration": 2, "flag": True, "name": "s", "nested": {"a": 1}}
    assert _numeric(result) == {"epoch": 2.0, "macro_f1": 0.5, "lr": 1e-3, "stage": 2.0,
                                "time_total_s": 3.0, "nested/a": 1.0}


def test_figures_render(tmp_path):
    history = pd.DataFrame({"epoch": [1, 2, 3], "macro_f1": [0.1, 0.2, 0.3], "val_acc": [10, 20, 30],
                            "train_loss": [2, 1.5, 1], "val_loss": [2.1, 1.7, 1.2]})
    figures = [metric_vs_epoch({"a": history, "b": history.assign(macro_f1=history.macro_f1 / 2)},
                               "macro_f1"),
               learning_curves(history), learning_curves(pd.DataFrame({"epoch": [1]})),
               confusion_figure(np.array([[3, 1], [0, 0]]), ["a", "b"])]
    for index, figure in enumerate(figures):
        path = tmp_path / f"{index}.png"
        figure.savefig(path)
        assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("text,diverged", [
    ("Failure # 1\nray.exceptions.RayTaskError(TrialDiverged): ... TrialDiverged: diverged: loss nan", True),
    ("Failure # 1\ntrainable.errors.DivergedError: train_loss is nan", True),
    ("Failure # 1\nRuntimeError: CUDA out of memory", False),
])
def test_diverged_is_told_from_the_error_file(tmp_path, text, diverged):
    from types import SimpleNamespace

    from tuner.tracking.callback import _error_info

    (tmp_path / "error.txt").write_text(text)
    trial = SimpleNamespace(pickled_error_file=None, error_file=str(tmp_path / "error.txt"),
                            get_error=lambda: None)
    assert _error_info(trial) == (text, diverged)


def test_optuna_plots_leave_the_matplotlib_style_alone(tmp_path):
    import matplotlib
    import optuna

    from tuner.tracking.artifacts import _optuna_history

    before = dict(matplotlib.rcParams)
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    _optuna_history(study, tmp_path / "history.png")
    assert (tmp_path / "history.png").read_bytes()[:4] == b"\x89PNG"
    assert dict(matplotlib.rcParams) == before


def test_metric_plot_highlights_the_given_best_trial():
    history = pd.DataFrame({"epoch": [1, 2], "macro_f1": [0.1, 0.2]})
    figure = metric_vs_epoch({"a": history, "b": history * 2}, "macro_f1", best_trial_id="a")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["a (best)", "b"]


def test_sqlite_store_without_a_server(tmp_path, monkeypatch):
    """The default path: the driver logs straight into sqlite:///<cwd>/mlflow.db; artifacts go
    next to the database (not into whatever directory the search ran from)."""
    from tuner.tracking.artifacts import log_search_artifacts

    monkeypatch.chdir(tmp_path)
    uri = store.resolve_tracking_uri(None)
    store.preflight(uri)
    client = store.client_for(uri)
    experiment_id = store.ensure_experiment(client, "croptune")
    experiment = client.get_experiment(experiment_id)
    assert experiment.artifact_location == (tmp_path / "mlartifacts" / "croptune").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = start_parent_run(client, experiment_id, "s1", params={"space": "optim"})
    history = pd.DataFrame({"epoch": [1, 2], "macro_f1": [0.1, 0.2]})
    log_search_artifacts(client, parent, pd.DataFrame({"trial_id": ["a"]}), {"a": history})
    finish_parent_run(client, parent)
    assert client.get_run(parent).info.status == "FINISHED"
    assert sorted(p.name for p in (tmp_path / "mlartifacts").rglob("*.*")) == ["metric_vs_epoch.png", "trials.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlartifacts", "mlflow.db"]


def test_a_tracking_failure_warns_once_and_does_not_stop_the_search(capsys):
    import pickle
    from types import SimpleNamespace

    from tuner.tracking.callback import MlflowTrialCallback

    class Broken:
        def __getattr__(self, name):
            def fail(*args, **kwargs):
                raise ConnectionError("tracking server went away")
            return fail

    callback = MlflowTrialCallback("http://127.0.0.1:9", "1", "parent")
    callback._client = Broken()
    trial = SimpleNamespace(trial_id="t1", config={}, last_result={"epoch": 1}, num_failures=0, status="RUNNING")
    callback.on_trial_start(0, [trial], trial)
    callback.on_trial_result(0, [trial], trial, {"epoch": 1, "macro_f1": 0.1})
    err = capsys.readouterr().err
    assert err.count("warning: MLflow logging failed") == 1 and "tracking server went away" in err
    assert pickle.loads(pickle.dumps(callback))._client is None  # Tune pickles RunConfig's callbacks
    callback.strict = True
    with pytest.raises(ConnectionError):
        callback.on_trial_start(0, [trial], trial)


def test_search_hook_opens_the_store_in_the_background(tmp_path):
    """start() opens (and, for a new sqlite file, creates) the store in a thread while Ray starts;
    a deleted experiment's error comes out of callbacks(), where it always did."""
    from tuner.tracking.hooks import MlflowSearchHooks

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    hooks = MlflowSearchHooks(uri, "bg")
    hooks.validate(None)
    assert not (tmp_path / "mlflow.db").exists()  # validation writes nothing
    hooks.start(None)
    assert hooks._opening.result(timeout=120)[0].get_experiment_by_name("bg").lifecycle_stage == "active"
    client, experiment_id = hooks._opening.result()
    client.delete_experiment(experiment_id)
    again = MlflowSearchHooks(uri, "bg")
    again.start(None)
    with pytest.raises(UserError, match="deleted"):
        again.callbacks(SimpleNamespace(settings=None))


def test_a_trial_paused_at_a_rung_shows_as_scheduled_until_it_resumes(tmp_path):
    """The scheduler pauses trials at a rung (no process, checkpoint kept): their runs are
    SCHEDULED + paused=true meanwhile, RUNNING again on resume; paused when the search is
    interrupted, they end KILLED + interrupted=true like the running ones."""
    from tuner.tracking.callback import MlflowTrialCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = store.client_for(uri)
    experiment_id = store.ensure_experiment(client, "rungs")
    parent = start_parent_run(client, experiment_id, "s", params={})
    callback = MlflowTrialCallback(uri, experiment_id, parent, base_config={"epochs": 4}, strict=True)
    a, b, c = (SimpleNamespace(trial_id=t, config={}, last_result={}, num_failures=0, status="RUNNING")
               for t in "abc")

    def state(trial):
        run = client.get_run(callback.run_id(trial.trial_id))
        return run.info.status, run.data.tags.get("paused"), run.data.tags.get("interrupted")

    for trial in (a, b, c):
        callback.on_trial_start(0, [a, b, c], trial)
        callback.on_trial_result(0, [a, b, c], trial, {"epoch": 1, "macro_f1": 0.1})
        trial.last_result = {"epoch": 1}
    a.status = "PAUSED"
    callback.on_step_end(1, [a, b])
    callback.on_step_end(2, [a, b])  # still paused: marked once
    assert state(a) == ("SCHEDULED", "true", None) and state(b) == ("RUNNING", None, None)
    a.status = "RUNNING"  # promoted: resumed from its checkpoint
    callback.on_trial_start(3, [a, b], a)
    callback.on_trial_result(3, [a, b], a, {"epoch": 2, "macro_f1": 0.2})
    assert state(a) == ("RUNNING", None, None)
    assert [m.step for m in client.get_metric_history(callback.run_id("a"), "macro_f1")] == [1, 2]
    c.status = "PAUSED"
    callback.on_step_end(4, [a, b, c])
    c.status = "TERMINATED"  # the scheduler's end game stops a paused trial: Tune completes it
    callback.on_trial_complete(5, [a, b, c], c)
    assert state(c) == ("KILLED", None, None)
    assert client.get_run(callback.run_id("c")).data.tags["stopped_early"] == "true"
    b.status = "PAUSED"
    callback.on_step_end(6, [a, b, c])
    callback.on_experiment_end([a, b, c])  # Ctrl-C with b paused at the rung and a running
    assert state(a) == state(b) == ("KILLED", None, "true")
    assert state(c) == ("KILLED", None, None)  # already ended: left as it was
