"""The user's path with MLflow, end to end, against the session's real `mlflow server`:

    python run_search.py ... --mlflow-uri http://127.0.0.1:PORT     (a 3-trial search, subprocess)
    python run_search.py export --experiment NAME --out best.yaml
    python run_search.py retrain --config best.yaml ...              (2 epochs, subprocess)

on tiny synthetic data (32 px, timm test_resnet, 2 epochs), then what the MLflow store holds
is checked against Tune's own record of the search.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from trainable.config import TrainConfig
from trainable.data.demo.dataset import layout_paths, write_synthetic_dataset
from tuner import export
from tuner.retrain import SEARCH_PARENT_TAG, SOURCE_TRIAL_RUN_TAG
from tuner.tracking import store
from tuner.tracking.ui import runs_url

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 2
EXPERIMENT = "croptune-e2e"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(args: list[str], cwd: Path, env: dict, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run_search.py"), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def data_flags(root: Path) -> list[str]:
    flags = []
    for key, value in layout_paths(root).items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags + ["--backbone", "test_resnet", "--no-pretrained", "--image-size", "32",
                    "--progressive-image-size", "40", "--batch-size", "32", "--num-workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("tracking-e2e")
    root = write_synthetic_dataset(base / "data", seed=0, max_per_class=6, min_per_class=2, val_per_class=1,
                                   image_size=32)
    work = base / "work"  # the commands' cwd: nothing may land here but what we ask for
    work.mkdir()
    env = {**os.environ, "CROPTUNE_CACHE_DIR": str(base / "cache"), "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return {"root": root, "work": work, "env": env, "storage": base / "results", "base": base}


@pytest.fixture(scope="module")
def searched(setup, mlflow_server):
    url = mlflow_server["url"]
    args = data_flags(setup["root"]) + [
        "--epochs", str(EPOCHS), "--space", "stage_epochs", "--num-samples", "3", "--grace-period", "1",
        "--reduction-factor", "2", "--storage-path", str(setup["storage"]), "--name", "tracked",
        "--mlflow-uri", url, "--mlflow-experiment", EXPERIMENT]
    proc = run_cli(args, setup["work"], setup["env"])
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    client = store.client_for(url)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    parents = client.search_runs([experiment_id], "tags.`croptune.role` = 'search'")
    assert len(parents) == 1
    parent = parents[0]
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    exp = setup["storage"] / "tracked"
    summary = json.loads((exp / "search_summary.json").read_text())
    progress = {}  # trial id -> Tune's per-epoch results (progress.csv: one row per tune.report)
    for trial_dir in (p for p in exp.iterdir() if p.is_dir()):
        # dtype: a trial id like "42957e50" would otherwise be read as the float 4.2957e+54
        frame = pd.read_csv(trial_dir / "progress.csv", dtype={"trial_id": str})
        progress[frame["trial_id"].iloc[0]] = frame
    return dict(proc=proc, url=url, client=client, experiment_id=experiment_id, parent=parent,
                children={run.data.tags["trial_id"]: run for run in children}, summary=summary,
                progress=progress, experiment_dir=exp)


def test_search_prints_the_parent_runs_page(searched):
    parent_id = searched["parent"].info.run_id
    url = runs_url(searched["url"], searched["experiment_id"], parent_id)
    assert f"MLflow: {url}" in searched["proc"].stdout
    assert url.endswith("?workflowType=machine_learning")


def test_one_parent_and_a_child_per_trial_with_tunes_history(searched):
    client, parent = searched["client"], searched["parent"]
    assert parent.info.status == "FINISHED" and parent.data.tags["croptune.search"] == "tracked"
    assert parent.data.params["space"] == "stage_epochs" and parent.data.params["num_samples"] == "3"
    assert set(searched["children"]) == set(searched["progress"]) and len(searched["children"]) == 3
    for trial_id, run in searched["children"].items():
        frame = searched["progress"][trial_id].drop_duplicates("epoch", keep="last")
        history = sorted(client.get_metric_history(run.info.run_id, "macro_f1"), key=lambda m: m.step)
        assert [m.step for m in history] == frame["epoch"].tolist(), trial_id
        assert [m.value for m in history] == pytest.approx(frame["macro_f1"].tolist()), trial_id
        early = int(frame["epoch"].max()) < EPOCHS  # ASHA stopped it at the first rung
        assert run.data.tags["stopped_early"] == str(early).lower(), trial_id
        assert run.info.status == ("KILLED" if early else "FINISHED"), trial_id
        assert run.data.params["epochs"] == str(EPOCHS) and run.data.params["backbone"] == "test_resnet"
    assert sum(r.data.tags["stopped_early"] == "true" for r in searched["children"].values()) == \
        searched["summary"]["num_stopped_early"]


def test_parent_has_the_trials_table_and_plots(searched, tmp_path):
    client, parent_id = searched["client"], searched["parent"].info.run_id
    listed = {a.path for a in client.list_artifacts(parent_id)} | {
        a.path for a in client.list_artifacts(parent_id, "plots")}
    assert {"trials.csv", "plots/metric_vs_epoch.png", "plots/optimization_history.png"} <= listed
    assert "plots/param_importances.png" in listed or "plots/skipped.txt" in listed
    trials = pd.read_csv(client.download_artifacts(parent_id, "trials.csv", str(tmp_path)), dtype={"trial_id": str})
    assert set(trials["trial_id"].astype(str)) == set(searched["progress"])
    png = Path(client.download_artifacts(parent_id, "plots/metric_vs_epoch.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_trial_run_has_the_confusion_matrix_of_its_last_epoch(searched, tmp_path):
    client, summary = searched["client"], searched["summary"]
    best = searched["children"][summary["best_trial_id"]]
    assert searched["parent"].data.tags["best_run_id"] == best.info.run_id
    assert {a.path for a in client.list_artifacts(best.info.run_id, "plots")} == {
        "plots/learning_curves.png", "plots/confusion_matrix.png"}
    counts = pd.read_csv(client.download_artifacts(best.info.run_id, "confusion_matrix.csv", str(tmp_path)),
                         index_col=0).to_numpy()
    last = searched["progress"][summary["best_trial_id"]].iloc[-1]
    assert counts.shape == (61, 61) and counts.sum() == 61  # one val image per class
    assert 100 * np.trace(counts) / counts.sum() == pytest.approx(last["val_acc"])  # that epoch's predictions


@pytest.fixture(scope="module")
def exported(searched, setup):
    out = setup["base"] / "best.yaml"
    assert export.main(["--experiment", "tracked", "--storage-path", str(setup["storage"]), "--out", str(out)]) == 0
    return out


def test_export_round_trips_into_a_train_config(exported, searched):
    config = export.load_config(exported)
    assert config == TrainConfig.from_dict(searched["summary"]["best_config"])
    assert TrainConfig.from_dict(yaml.safe_load(exported.read_text())) == config
    assert f"# trial: {searched['summary']['best_trial_id']}" in exported.read_text()


@pytest.fixture(scope="module")
def retrained(exported, searched, setup):
    save_dir = setup["base"] / "retrain"
    # --use-ema (a flag over the exported config): the logged model must be the EMA shadow
    args = ["retrain", "--config", str(exported), "--save-dir", str(save_dir), "--use-ema",
            "--mlflow-uri", searched["url"], "--mlflow-experiment", EXPERIMENT]
    proc = run_cli(args, setup["work"], setup["env"])
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    client = searched["client"]
    (run,) = client.search_runs([searched["experiment_id"]], "tags.`croptune.role` = 'retrain'")
    return dict(proc=proc, run=run, save_dir=save_dir)


def test_retrain_is_logged_under_its_search(retrained, searched):
    run, client = retrained["run"], searched["client"]
    parent_id = searched["parent"].info.run_id
    best_run = searched["children"][searched["summary"]["best_trial_id"]].info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags[SEARCH_PARENT_TAG] == run.data.tags["mlflow.parentRunId"] == parent_id
    assert run.data.tags[SOURCE_TRIAL_RUN_TAG] == best_run
    assert run.data.tags["croptune.source_trial_score"].startswith("macro_f1 = ")
    assert run.data.params["epochs"] == str(EPOCHS) and run.data.params["save_dir"] == str(retrained["save_dir"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "macro_f1")] == [1, 2]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {
        "checkpoints/best_custom.pth", "checkpoints/last.pth", "checkpoints/config.yaml"}
    out = retrained["proc"].stdout
    final = client.get_metric_history(run.info.run_id, "val_acc")[-1].value
    assert f"done: val acc {final:.2f}%" in out
    assert f"MLflow: {runs_url(searched['url'], searched['experiment_id'], run.info.run_id)}" in out


def test_nothing_lands_in_the_working_directory(retrained, setup):
    assert list(setup["work"].iterdir()) == []  # no mlflow.db, mlartifacts, ray_results, checkpoints


def test_retrained_model_is_the_last_epochs_ema_and_runs_on_a_batch(retrained, searched):
    import mlflow.pytorch
    import torch

    from trainable.cli_config import read_yaml_config
    from trainable.data.dataset import load_data
    from trainable.model.networks import build_model
    from trainable.train.augment import eval_transform
    from trainable.train.checkpoint import load_checkpoint
    from trainable.train.schedule import plan

    run = retrained["run"]
    model_uri = run.data.tags["model_uri"]
    assert f"model: {model_uri}" in retrained["proc"].stdout
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(searched["url"])  # models:/ URIs resolve through the tracking server
    try:
        model = mlflow.pytorch.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(previous)  # it also exported $MLFLOW_TRACKING_URI: keep later tests clean
    cfg = TrainConfig.from_dict(read_yaml_config(str(retrained["save_dir"] / "config.yaml")))
    assert cfg.use_ema
    val = load_data(cfg, progress=False).val
    images = eval_transform(torch.from_numpy(np.array(val.images)), plan(cfg, EPOCHS - 1).image_size)
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (len(val.labels), 61)

    state = load_checkpoint(retrained["save_dir"] / "last.pth")
    assert state["epoch"] == EPOCHS
    net = build_model(cfg).eval()
    with torch.no_grad():
        net.load_state_dict(state["ema_state_dict"])
        assert torch.allclose(logits, net(images)["logits"], atol=1e-4)
        net.load_state_dict(state["model_state_dict"])
        assert not torch.allclose(logits, net(images)["logits"], atol=1e-4)
    accuracy = 100 * float((logits.argmax(1).numpy() == val.labels).mean())
    final = max(searched["client"].get_metric_history(run.info.run_id, "val_acc"), key=lambda m: m.step)
    assert accuracy == pytest.approx(final.value, abs=100 / len(val.labels) + 1e-6)


@pytest.mark.parametrize("args, message", [
    (["retrain", "--config", "missing.yaml"], "--config missing.yaml: no such file"),
    (["retrain", "--config", "{best}", "--mlflow-uri", "http://127.0.0.1:{dead}"],
     "cannot reach the MLflow tracking server"),
    (["retrain", "--config", "{best}", "--mlflow-uri", "sqlite:////nonexistent/dir/m.db"],
     "directory /nonexistent/dir does not exist"),
    (["--epochs", "2", "--mlflow-uri", "http://127.0.0.1:{dead}"], "cannot reach the MLflow tracking server"),
    (["--epochs", "2", "--mlflow-uri", "./mlruns"], "refuses the plain file store"),
])
def test_bad_tracking_input_is_one_line_exit_2_and_writes_nothing(setup, exported, tmp_path, args, message):
    args = [a.format(best=exported, dead=free_port()) for a in args]
    if args[0] != "retrain":  # a search
        args = data_flags(setup["root"]) + args
    proc = run_cli(args, tmp_path, setup["env"], timeout=120)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not any(tmp_path.iterdir())
