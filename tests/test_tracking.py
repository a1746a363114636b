"""MLflow tracking against a real `mlflow server` (sqlite backend), driven by a real Tune run.

One server for the test session (tests/conftest.py), started the way users start it
(`run_search.py ui` -> tuner.tracking.ui.main), and one Ray session. The toy search has four trials run one
at a time so ASHA is deterministic: `good` runs all epochs, `weak` is stopped by ASHA at the first rung,
`diverge` raises DivergedError, `flaky` crashes once and is retried.
"""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest

from trainable.config import SEED_EPOCHS, TrainConfig, scale_schedule
from trainable.errors import UserError
from tuner import export
from tuner.tracking import store
from tuner.tracking.artifacts import log_best_trial_artifacts, log_search_artifacts, tables_from_results
from tuner.tracking.callback import MlflowTrialCallback
from tuner.tracking.runs import finish_parent_run, start_parent_run
from tuner.tracking.ui import experiment_id_by_name, runs_url
from tuner.tracking.ui import main as ui_main

EPOCHS = 4
QUALITY = {"good": 1.0, "weak": 0.1, "diverge": 2.0, "flaky": 1.0}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_session, mlflow_server):
    """The session's MLflow server (tests/conftest.py: `run_search.py ui` in a subprocess);
    Ray starts while it comes up."""
    return mlflow_server


@pytest.fixture(scope="module")
def ray_session(mlflow_ui):
    import ray

    # Workers cannot import this test module by name: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def toy_trainable(config):
    from ray import tune

    from trainable.errors import DivergedError

    case, marker = config["case"], Path(config["marker_dir"]) / config["case"]
    for epoch in range(1, EPOCHS + 1):
        if case == "diverge" and epoch == 2:
            raise DivergedError("train_loss is nan at epoch 2")
        if case == "flaky" and epoch == 3 and not marker.exists():
            marker.touch()
            raise RuntimeError("worker crashed")
        score = QUALITY[case] * epoch / EPOCHS
        tune.report({"epoch": epoch, "macro_f1": score, "val_acc": 100 * score, "train_loss": 1 - score / 2,
                     "val_loss": 1.1 - score / 2, "train_acc": 90 * score, "tail_acc": 50 * score,
                     "stage": 1})


@pytest.fixture(scope="module")
def search(ray_session, server, tmp_path_factory):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    storage = tmp_path_factory.mktemp("ray_results")
    markers = tmp_path_factory.mktemp("markers")
    client = store.client_for(server["url"])
    experiment_id = store.ensure_experiment(client, "croptune-test")
    values = scale_schedule(TrainConfig().to_dict(), SEED_EPOCHS, EPOCHS)
    base = TrainConfig.from_dict({**values, "epochs": EPOCHS, "demo": True}).validate()
    parent = start_parent_run(client, experiment_id, "toysearch",
                              params={"space": "toy", "metric": "macro_f1", "num_samples": 4,
                                      "base_config": base.to_dict()})
    callback = MlflowTrialCallback(server["url"], experiment_id, parent, base.to_dict(), strict=True)
    tuner = tune.Tuner(
        toy_trainable,
        param_space={"case": tune.grid_search(list(QUALITY)), "dropout": 0.1, "marker_dir": str(markers)},
        tune_config=tune.TuneConfig(metric="macro_f1", mode="max", max_concurrent_trials=1, reuse_actors=True,
                                    scheduler=ASHAScheduler(time_attr="epoch", max_t=EPOCHS,
                                                            grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(name="toysearch", storage_path=str(storage), callbacks=[callback],
                                  failure_config=tune.FailureConfig(max_failures=1), verbose=0),
    )
    results = tuner.fit()
    finish_parent_run(client, parent, "FINISHED")
    by_case = {r.config["case"]: r for r in results}
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    runs = {run.data.params["search.case"]: run for run in children}
    return dict(client=client, experiment_id=experiment_id, parent=parent, results=results,
                by_case=by_case, runs=runs, children=children, callback=callback, base=base,
                server_root=server["root"],
                experiment_dir=storage / "toysearch")


def test_ui_serves_http_200(server):
    assert "MLflow UI for sqlite:///" in server["printed"]
    with urllib.request.urlopen(server["url"] + "/", timeout=10) as response:
        assert response.status == 200


def test_preflight_accepts_the_live_server(server):
    store.preflight(server["url"])


def test_experiment_is_tagged_for_the_training_ui(search, server):
    experiment = search["client"].get_experiment(search["experiment_id"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment_id_by_name(server["url"], "croptune-test") == search["experiment_id"]
    assert store.ensure_experiment(search["client"], "croptune-test") == search["experiment_id"]


def test_one_parent_and_one_child_per_trial(search):
    client, parent = search["client"], search["parent"]
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(parent).data.params["space"] == "toy"
    assert len(search["children"]) == 4 and set(search["runs"]) == set(QUALITY)
    for case, run in search["runs"].items():
        assert run.data.tags["trial_id"] == search["by_case"][case].metrics["trial_id"]


def test_child_statuses_and_tags(search):
    runs = search["runs"]
    assert runs["good"].info.status == "FINISHED" and runs["good"].data.tags["stopped_early"] == "false"
    assert runs["weak"].info.status == "KILLED" and runs["weak"].data.tags["stopped_early"] == "true"
    assert runs["diverge"].info.status == "FAILED", runs["diverge"].data.tags
    assert runs["diverge"].data.tags["diverged"] == "true", runs["diverge"].data.tags.get("error")
    assert "DivergedError" in runs["diverge"].data.tags["error"]
    assert runs["flaky"].info.status == "FINISHED" and runs["flaky"].data.tags["num_failures"] == "1"


def test_per_epoch_history_matches_tune(search):
    client = search["client"]
    for case, run in search["runs"].items():
        history = client.get_metric_history(run.info.run_id, "macro_f1")
        logged = [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)]
        frame = search["by_case"][case].metrics_dataframe.drop_duplicates("epoch")
        assert logged == list(zip(frame["epoch"], frame["macro_f1"], strict=True)), case
    steps = {case: [m.step for m in client.get_metric_history(r.info.run_id, "macro_f1")]
             for case, r in search["runs"].items()}
    assert steps == {"good": [1, 2, 3, 4], "weak": [1], "diverge": [1], "flaky": [1, 2, 3, 4]}


def test_child_params_are_the_resolved_config(search):
    params = search["runs"]["good"].data.params
    assert params["dropout"] == "0.1" and params["epochs"] == str(EPOCHS)  # override + base
    assert params["demo"] == "true" and params["backbone"] == "resnet50"
    assert params["search.case"] == "good"


def search_root_files(search):
    return list((search["server_root"] / "mlartifacts").rglob("*"))


def test_search_and_best_trial_artifacts(search, tmp_path):
    client, parent = search["client"], search["parent"]
    trials, histories = tables_from_results(search["results"], "macro_f1", "max")
    assert len(trials) == 4 and set(trials["status"]) == {"ok", "error"}
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_float("y", 0, 1), n_trials=6)
    logged = log_search_artifacts(client, parent, trials, histories, study)
    assert set(logged) >= {"trials.csv", "plots/metric_vs_epoch.png", "plots/optimization_history.png",
                           "plots/param_importances.png"}
    listed = {a.path for a in client.list_artifacts(parent, "plots")}
    assert "plots/metric_vs_epoch.png" in listed
    stored = search_root_files(search)
    assert any(p.name == "trials.csv" for p in stored)  # next to the database, not in the cwd
    local = Path(client.download_artifacts(parent, "plots/optimization_history.png", str(tmp_path)))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    good = search["runs"]["good"].info.run_id
    trial_id = search["by_case"]["good"].metrics["trial_id"]
    assert search["callback"].run_id(trial_id) == good
    matrix = np.diag(np.arange(1, 62))
    logged = log_best_trial_artifacts(client, good, histories[trial_id], confusion=matrix)
    assert {a.path for a in client.list_artifacts(good, "plots")} == {
        "plots/learning_curves.png", "plots/confusion_matrix.png"}
    assert "confusion_matrix.csv" in logged


def test_a_plot_that_cannot_be_drawn_is_skipped_not_fatal(search):
    trials, histories = tables_from_results(search["results"])
    run = search["client"].create_run(search["experiment_id"], run_name="artifacts-skip")
    logged = log_search_artifacts(search["client"], run.info.run_id, trials, histories, study=object())
    assert logged == ["plots/metric_vs_epoch.png", "plots/skipped.txt", "trials.csv"]


class FakeTrial:
    """What the callback reads from a Tune Trial."""

    def __init__(self, trial_id, config):
        self.trial_id, self.config = trial_id, config
        self.last_result, self.status, self.num_failures = {}, "RUNNING", 0

    def __str__(self):
        return f"fake_{self.trial_id}"


def test_resume_after_driver_restart_continues_the_same_run(search):
    client, experiment_id, parent = search["client"], search["experiment_id"], search["parent"]
    base = {**search["base"].to_dict(), "epochs": 3}
    first = MlflowTrialCallback(search["callback"].tracking_uri, experiment_id, parent, base, strict=True)
    trial = FakeTrial("resume_00000", {"lr": 0.01})
    first.on_trial_start(0, [trial], trial)
    for epoch in (1, 2):
        trial.last_result = {"epoch": epoch, "macro_f1": epoch / 10, "training_iteration": epoch}
        first.on_trial_result(0, [trial], trial, dict(trial.last_result))
    first.on_experiment_end([trial])  # Ctrl-C
    run_id = first.run_id("resume_00000")
    assert client.get_run(run_id).info.status == "KILLED"
    assert client.get_run(run_id).data.tags["interrupted"] == "true"

    # A fresh driver: nothing in memory, or Tune's saved callback state (set_state) at most.
    second = pickle.loads(pickle.dumps(MlflowTrialCallback(first.tracking_uri, experiment_id,
                                                           parent, base, strict=True)))
    second.set_state(first.get_state())
    second.on_trial_start(0, [trial], trial)
    assert second.run_id("resume_00000") == run_id
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and "interrupted" not in run.data.tags
    for epoch in (2, 3):  # epoch 2 again: restored from the epoch-1 checkpoint
        trial.last_result = {"epoch": epoch, "macro_f1": epoch / 10, "training_iteration": epoch}
        second.on_trial_result(0, [trial], trial, dict(trial.last_result))
    second.on_trial_complete(0, [trial], trial)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stopped_early"] == "false"
    assert [m.step for m in client.get_metric_history(run_id, "macro_f1")] == [1, 2, 3]
    assert run.data.params["lr"] == "0.01"
    siblings = client.search_runs([experiment_id], "tags.trial_id = 'resume_00000'")
    assert len(siblings) == 1


def test_resume_reopens_the_parent_run(search):
    client, experiment_id = search["client"], search["experiment_id"]
    again = start_parent_run(client, experiment_id, "toysearch", resume=True)
    assert again == search["parent"]
    assert client.get_run(again).info.status == "RUNNING"
    finish_parent_run(client, again, "KILLED")
    assert client.get_run(again).info.status == "KILLED"
    fresh = start_parent_run(client, experiment_id, "another", resume=True)
    assert fresh != again


def test_export_falls_back_to_the_tune_experiment(search, tmp_path):
    """No search_summary.json (search interrupted): best trial from ExperimentAnalysis."""
    experiment_dir = search["experiment_dir"]
    (experiment_dir / "base_config.json").write_text(json.dumps(search["base"].to_dict()))
    out = tmp_path / "best.yaml"
    assert export.main(["--experiment", str(experiment_dir), "--out", str(out)]) == 0
    config = export.load_config(out)
    assert config == search["base"].replace(dropout=0.1)
    text = out.read_text()
    good_id = search["by_case"]["good"].metrics["trial_id"]
    assert f"# trial: {good_id}" in text and "# metric: macro_f1 = 1.0 (max)" in text


def test_preflight_dead_port_fails_fast():
    port = free_port()
    start = time.monotonic()
    with pytest.raises(UserError, match=f"cannot reach the MLflow tracking server at http://127.0.0.1:{port}"):
        store.preflight(f"http://127.0.0.1:{port}")
    assert time.monotonic() - start < 10


def test_preflight_rejects_a_server_that_is_not_mlflow(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                           cwd=site, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        with pytest.raises(UserError, match="HTTP 404 .*is it an MLflow tracking server"):
            store.preflight(f"http://127.0.0.1:{port}")
    finally:
        web.terminate()
        web.wait()


def test_ui_for_a_remote_server_only_prints_its_url(search, server, capsys):
    assert ui_main(["--mlflow-uri", server["url"], "--mlflow-experiment", "croptune-test"]) == 0
    assert capsys.readouterr().out.strip() == "MLflow UI: " + runs_url(
        server["url"], search["experiment_id"])


def test_ui_refuses_a_busy_port(server, tmp_path):
    with pytest.raises(UserError, match=f"127.0.0.1:{server['port']}.*choose another --port"):
        ui_main(["--port", str(server["port"]), "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"])



def test_search_hooks_log_a_whole_search(search, server, capsys):
    """tuner.hooks integration: flags -> validate -> parent + callback -> artifacts, FINISHED."""
    import argparse
    from types import SimpleNamespace

    from tuner.hooks import SearchContext
    from tuner.tracking.hooks import add_search_arguments, search_hooks

    parser = argparse.ArgumentParser()
    add_search_arguments(parser)
    assert vars(parser.parse_args([])) == {}  # only given flags appear (--resume accepts them)
    (off,) = search_hooks(SimpleNamespace(namespace=parser.parse_args(["--no-mlflow"])))
    assert off.callbacks(None) == [] and off.resume_flags() == ["--no-mlflow"]  # resumes untracked too
    from tuner.search import resume_command

    where = SimpleNamespace(name="s1", storage_path="/tmp/r")
    assert resume_command(where, [off]) == "python run_search.py --resume s1 --storage-path /tmp/r --no-mlflow"
    namespace = parser.parse_args(["--mlflow-uri", server["url"], "--mlflow-experiment", "croptune-hooks"])
    settings = SimpleNamespace(name="hooksearch", space="toy", metric="macro_f1", mode="max", num_samples=4,
                               seed=0, grace_period=1, reduction_factor=2, max_failures=1, time_budget_s=None,
                               resume=False, namespace=namespace, sampler="random", share_prefix=True)
    (hooks,) = search_hooks(settings)
    hooks.validate(settings)
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1) * t.suggest_float("y", 0, 1), n_trials=5)
    good = search["by_case"]["good"]
    context = SearchContext(settings=settings, experiment_path=str(search["experiment_dir"]),
                            base_config=search["base"], data_info={"fingerprint": "f00", "class_counts": [1, 2]},
                            searcher=SimpleNamespace(study=study), results=search["results"],
                            summary={"best_trial_id": good.metrics["trial_id"]})
    (callback,) = hooks.callbacks(context)
    trial = FakeTrial(good.metrics["trial_id"], dict(good.config))
    callback.on_trial_start(0, [trial], trial)
    for row in good.metrics_dataframe.to_dict("records"):
        trial.last_result = row
        callback.on_trial_result(0, [trial], trial, dict(row))
    callback.on_trial_complete(0, [trial], trial)
    hooks.finished(context, "finished")

    client = search["client"]
    parent = client.get_run(hooks.parent)
    assert parent.info.status == "FINISHED" and parent.data.params["base.epochs"] == str(EPOCHS)
    assert parent.data.params["data_fingerprint"] == "f00" and parent.data.params["space"] == "toy"
    assert parent.data.params["searcher"] == "OptunaSearch(random)" and parent.data.params["share_prefix"] == "true"
    assert {a.path for a in client.list_artifacts(hooks.parent)} >= {"trials.csv", "plots"}
    best = parent.data.tags["best_run_id"]
    assert {a.path for a in client.list_artifacts(best, "plots")} == {"plots/learning_curves.png"}
    out = capsys.readouterr().out
    assert f"#/experiments/{hooks.experiment_id}/runs/{hooks.parent}?workflowType=machine_learning" in out


def test_ui_stops_on_ctrl_c_even_when_started_with_sigint_ignored(tmp_path):
    """`run_search.py ui &` from a script: the shell starts it with SIGINT ignored, and Python
    keeps that; `ui` must still stop (and stop its server) on SIGINT."""
    import signal
    import socket
    import subprocess
    import sys

    from conftest import _free_port

    port = _free_port()
    code = "import sys; from tuner.tracking.ui import main; sys.exit(main(sys.argv[1:]))"
    ui = subprocess.Popen([sys.executable, "-c", code, "--port", str(port), "--mlflow-uri",
                           f"sqlite:///{tmp_path / 'm.db'}"], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        for line in ui.stdout:
            if line.strip().startswith("http://"):
                break
        assert ui.poll() is None
        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=60) == 0
    finally:
        if ui.poll() is None:
            ui.kill()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # the server went with it
