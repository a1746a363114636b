"""`run_search.py verify` end to end on tiny data: a real 2-trial search (with its MLflow parent
run in a real SQLite store), then verify on 2 seeds: verify.json, its MLflow runs, export's note."""

import json
import math

import pytest

from trainable.data.demo.dataset import layout_paths, write_synthetic_dataset
from tuner import verify


def test_compare_flags_a_difference_beyond_two_standard_errors():
    clear = verify.compare([0.50, 0.52, 0.51], [0.40, 0.41, 0.39])
    assert clear["difference"] == pytest.approx(0.11)
    assert clear["standard_error"] == pytest.approx(math.sqrt(0.0001 / 3 + 0.0001 / 3))
    assert clear["beyond_noise"] is True
    noisy = verify.compare([0.50, 0.30, 0.45], [0.40, 0.41, 0.39])
    assert noisy["beyond_noise"] is False


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished 2-trial search on tiny data, tracked in a real SQLite store."""
    import os

    base = tmp_path_factory.mktemp("verify")
    root = write_synthetic_dataset(base / "data", seed=0, max_per_class=6, min_per_class=2, val_per_class=1,
                                   image_size=32)
    uri = f"sqlite:///{base / 'mlflow.db'}"
    flags = [arg for key, value in layout_paths(root).items() for arg in ("--" + key.replace("_", "-"), str(value))]
    argv = flags + ["--backbone", "test_resnet", "--no-pretrained", "--image-size", "32",
                    "--progressive-image-size", "32", "--batch-size", "32", "--epochs", "1", "--num-workers", "0",
                    "--device", "cpu", "--storage-path", str(base / "runs"), "--name", "tiny",
                    "--space", "stage_epochs", "--num-samples", "2", "--mlflow-uri", uri,
                    "--mlflow-experiment", "verify-test"]
    old = os.environ.get("CROPTUNE_CACHE_DIR")
    os.environ["CROPTUNE_CACHE_DIR"] = str(base / "cache")  # Ray's workers inherit it
    try:
        from tuner.search import main as search_main

        assert search_main(argv) == 0
    finally:
        if old is not None:
            os.environ["CROPTUNE_CACHE_DIR"] = old
    return {"base": base, "uri": uri, "experiment": base / "runs" / "tiny"}


def test_verify_writes_verify_json_and_nests_its_runs_under_the_search(searched, cli_in_process, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("CROPTUNE_CACHE_DIR", str(searched["base"] / "cache"))
    code, out, err = cli_in_process(verify.main, [
        "--experiment", "tiny", "--storage-path", str(searched["base"] / "runs"), "--seeds", "2",
        "--mlflow-uri", searched["uri"], "--mlflow-experiment", "verify-test"])
    assert code == 0, err
    result = json.loads((searched["experiment"] / "verify.json").read_text())
    assert result["seeds"] == [42, 43]
    for group in ("winner", "baseline"):
        for key in ("macro_f1", "val_acc", "tail_acc"):
            assert len(result[group][key]) == 2 and all(math.isfinite(v) for v in result[group][key])
        assert result[group]["config"]["epochs"] == 1
    first = list(searched["experiment"].glob(f"train_trial_{result['baseline_trial_id']}_1_*"))
    assert len(first) == 1  # trial 0: the first trial Tune created (the enqueued seed point)
    verdict = "beyond seed noise" if result["comparison"]["macro_f1"]["beyond_noise"] else "within seed noise"
    assert f"{verdict}" in [line for line in out.splitlines() if line.strip().startswith("macro_f1")][0]
    assert result["threads"] == verify.trial_threads(searched["experiment"])

    client = MlflowClient(searched["uri"])
    experiment = client.get_experiment_by_name("verify-test")
    parent = client.search_runs([experiment.experiment_id], "tags.`croptune.role` = 'search'")[0]
    runs = client.search_runs([experiment.experiment_id], "tags.verify = 'true'")
    assert sorted((r.data.tags["verify_group"], r.data.tags["seed"]) for r in runs) == [
        ("baseline", "42"), ("baseline", "43"), ("winner", "42"), ("winner", "43")]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert all(r.info.status == "FINISHED" and "macro_f1" in r.data.metrics for r in runs)

    # the seed's own run reproduces the trial's score (same data, seed, epochs and threads)
    summary = json.loads((searched["experiment"] / "search_summary.json").read_text())
    assert result["winner"]["macro_f1"][0] == pytest.approx(summary["best_value"], abs=1e-9)

    from tuner import export

    code, out, _ = cli_in_process(export.main, ["--experiment", str(searched["experiment"]),
                                                "--out", str(searched["base"] / "best.yaml")])
    assert code == 0
    assert "verified on 2 seeds against the seed recipe" in out


def test_verify_runs_at_the_trials_thread_count(tmp_path):
    (tmp_path / "croptune_search.json").write_text(json.dumps({"resources": {"per_trial": {"cpu": 4.0, "gpu": 0}}}))
    assert verify.trial_threads(tmp_path) == 4
    (tmp_path / "croptune_search.json").write_text("{}")
    assert verify.trial_threads(tmp_path) == 1


def test_verify_refuses_blank_tracking_flags_before_training(searched, cli_in_process):
    before = sorted(p.name for p in searched["experiment"].iterdir())
    code, out, err = cli_in_process(verify.main, ["--experiment", str(searched["experiment"]),
                                                  "--mlflow-experiment", ""])
    assert code == 2 and err.startswith("error: --mlflow-experiment is empty")
    assert "seed" not in out  # nothing trained
    assert sorted(p.name for p in searched["experiment"].iterdir()) == before


def test_verify_needs_two_seeds(searched, cli_in_process):
    code, _, err = cli_in_process(verify.main, ["--experiment", str(searched["experiment"]), "--seeds", "1",
                                                "--no-mlflow"])
    assert code == 2 and err.startswith("error: --seeds 1")


def test_a_winner_that_is_the_seed_recipe_is_trained_once_per_seed(searched, cli_in_process, monkeypatch, tmp_path):
    import shutil

    from tuner.export import best_trial

    monkeypatch.setenv("CROPTUNE_CACHE_DIR", str(searched["base"] / "cache"))
    copy = tmp_path / "tiny"
    shutil.copytree(searched["experiment"], copy)
    _, baseline = verify.baseline_trial(copy)
    summary = json.loads((copy / "search_summary.json").read_text())
    summary["best_config"] = baseline.to_dict()
    (copy / "search_summary.json").write_text(json.dumps(summary))
    assert best_trial(copy)["config"] == baseline.to_dict()
    code, out, err = cli_in_process(verify.main, ["--experiment", str(copy), "--seeds", "2", "--no-mlflow"])
    assert code == 0, err
    assert "(= the seed recipe: trained once per seed)" in out and "[2/2]" in out
    result = json.loads((copy / "verify.json").read_text())
    assert result["winner"]["macro_f1"] == result["baseline"]["macro_f1"]
    assert result["comparison"]["macro_f1"]["difference"] == 0.0
