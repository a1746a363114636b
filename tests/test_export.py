"""`run_search.py export`: best trial -> complete TrainConfig YAML (the Tune-dir fallback is
tested in test_tracking.py, next to the Tune run it reads)."""

from __future__ import annotations

import pytest
import yaml
from helpers import best_config, write_summary

from trainable.config import SEED_EPOCHS, TrainConfig, scale_schedule
from trainable.errors import UserError
from tuner import export


def test_export_round_trips_the_complete_config(tmp_path, capsys):
    write_summary(tmp_path / "ray_results")
    out = tmp_path / "out" / "best.yaml"
    code = export.main(["--experiment", "stage_epochs-1", "--storage-path", str(tmp_path / "ray_results"),
                        "--out", str(out)])
    assert code == 0
    assert export.load_config(out) == best_config()
    assert TrainConfig.from_dict(yaml.safe_load(out.read_text())) == best_config()
    text = out.read_text()
    assert text.startswith("# croptune best configuration")
    assert "# experiment: stage_epochs-1\n# trial: abc_00003\n# metric: macro_f1 = 0.4217 (max)\n" in text
    assert set(yaml.safe_load(text)) == set(TrainConfig().to_dict())  # every field, not just the searched
    assert "retrain --config" in capsys.readouterr().out


def test_export_accepts_the_experiment_directory(tmp_path):
    experiment = write_summary(tmp_path)
    out = tmp_path / "best.yaml"
    assert export.main(["--experiment", str(experiment), "--out", str(out)]) == 0
    assert export.load_config(out).lr == 3e-4


def test_export_epochs_rescales_the_schedule(tmp_path):
    seed = TrainConfig(demo=True)
    write_summary(tmp_path, config=seed)
    out = tmp_path / "best.yaml"
    export.main(["--experiment", str(tmp_path / "stage_epochs-1"), "--out", str(out), "--epochs", "100"])
    config = export.load_config(out)
    expected = scale_schedule(seed.to_dict(), SEED_EPOCHS, 100)
    assert config.epochs == 100 and config.stage2_epoch == 20 and config.final_clean_epoch == 80
    assert config.to_dict() == {**expected, "epochs": 100}
    assert "# epochs rescaled 50 -> 100" in out.read_text()


def test_export_short_rescale_stays_valid(tmp_path):
    write_summary(tmp_path)
    out = tmp_path / "best.yaml"
    export.main(["--experiment", str(tmp_path / "stage_epochs-1"), "--out", str(out), "--epochs", "3"])
    assert export.load_config(out).epochs == 3


@pytest.mark.parametrize("setup,args,message", [
    (lambda root: None, ["--experiment", "nope"], "no search named 'nope'"),
    (lambda root: (root / "ray_results" / "empty").mkdir(parents=True), ["--experiment", "empty"],
     "neither search_summary.json nor base_config.json"),
    (lambda root: write_summary(root / "ray_results", "failed", best_config=None), ["--experiment", "failed"],
     "no best trial"),
    (lambda root: write_summary(root / "ray_results", "x"), ["--experiment", "x", "--epochs", "0"],
     "--epochs=0: must be at least 1"),
])
def test_export_errors(tmp_path, monkeypatch, setup, args, message):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    with pytest.raises(UserError, match=message):
        export.main(args + ["--out", str(tmp_path / "best.yaml")])
    assert not (tmp_path / "best.yaml").exists()


def test_load_config_rejects_unknown_fields(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: 0.1\nlearning_rate: 0.2\n")
    with pytest.raises(UserError, match="unknown TrainConfig field.*learning_rate"):
        export.load_config(path)


@pytest.mark.parametrize("kind, message", [
    ("binary", "is not a text file (not UTF-8)"),
    ("directory", "is a directory; pass the YAML file itself"),
])
def test_retrain_of_a_config_that_is_not_yaml_text_is_one_line(tmp_path, monkeypatch, cli_in_process, kind, message):
    from tuner import retrain

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tmp_path / "best.yaml"
    if kind == "binary":
        config.write_bytes(b"\x80\x02PK\x03\x04" + bytes(range(256)) * 4)  # e.g. a checkpoint passed by mistake
    else:
        config.mkdir()
    code, out, err = cli_in_process(retrain.main, ["--config", str(config)])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --config {config} {message}"), err
    assert "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["best.yaml"]  # no mlflow.db, no checkpoints/
