"""run_search.py's command line: fast --help, TrainConfig flags on the base, --resume rules, summary."""

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainable.config import TrainConfig
from trainable.errors import UserError
from tuner.cli import parse_duration, parse_settings
from tuner.experiment import META_FILE, check_new_experiment
from tuner.summary import SUMMARY_KEYS, build_summary, format_report, trial_records

REPO = Path(__file__).resolve().parents[1]


def test_help_is_fast_and_imports_neither_ray_nor_torch():
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "run_search.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0 and "--space" in proc.stdout and "--train-dir" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    heavy = {name for name in imported if name.split(".")[0] in ("ray", "torch", "timm", "optuna", "mlflow")}
    assert not heavy, sorted(heavy)[:10]
    assert elapsed < 10, elapsed  # ~0.1 s on an idle machine; generous for loaded CI


def test_trainconfig_flags_change_the_base_and_seed_is_shared(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = parse_settings(["--backbone", "resnet18", "--epochs", "10", "--seed", "7", "--train-dir", "d/train",
                        "--space", "optim", "--num-samples", "4"])
    assert s.base.backbone == "resnet18" and s.base.epochs == 10
    assert s.base.stage2_epoch == 2  # schedule scaled from the seed's 50 epochs
    assert s.seed == s.base.seed == 7
    assert s.base.train_dir == str(tmp_path / "d" / "train")  # resolved on the driver
    assert s.storage_path == str(tmp_path / "ray_results")
    assert s.name.startswith("optim-") and s.grace_period == 2 and s.metric == "macro_f1"
    assert s.num_samples == 4 and not s.resume


def test_default_grace_skips_warmup(tmp_path, monkeypatch):
    from trainable.config import TrainConfig
    from tuner.cli import default_grace

    assert default_grace(TrainConfig()) == 6                             # seed: warmup 5 of 50
    assert default_grace(TrainConfig(epochs=12, warmup_epochs=0)) == 1   # the demo recipe
    assert default_grace(TrainConfig(epochs=100, warmup_epochs=2)) == 10  # a tenth of the run
    assert default_grace(TrainConfig(epochs=3, warmup_epochs=5)) == 3    # never past the run
    monkeypatch.chdir(tmp_path)
    assert parse_settings(["--epochs", "4", "--warmup-epochs", "2", "--train-dir", "d"]).grace_period == 3


def test_search_flags_and_durations():
    s = parse_settings(["--metric", "tail_acc", "--time-budget", "30m", "--grace-period", "3", "--name", "x1",
                        "--max-failures", "0", "--gpus-per-trial", "0.5", "--address", "ray://head:10001"])
    assert s.metric == "tail_acc" and s.time_budget_s == 1800 and s.grace_period == 3 and s.name == "x1"
    assert s.max_failures == 0 and s.gpus_per_trial == 0.5 and s.address == "ray://head:10001"
    assert parse_duration("90") == 90 and parse_duration("2h") == 7200


@pytest.mark.parametrize("argv, message", [
    (["--num-samples", "0"], "--num-samples 0"),
    (["--grace-period", "60"], "--grace-period 60"),
    (["--reduction-factor", "1"], "--reduction-factor 1"),
    (["--time-budget", "soon"], "--time-budget soon"),
    (["--name", "a/b"], "--name a/b"),
    (["--address", "not an address"], "--address"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial 0"),
    (["--cpus-per-trial", "100000"], "--cpus-per-trial 100000: this machine has only"),  # before Ray starts
    (["--name", ""], "--name '': the name is empty"),
    (["--resume", " "], "--resume '': the name is empty"),
])
def test_bad_search_flags_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        parse_settings(argv)


def test_resume_takes_settings_from_the_experiment(tmp_path):
    exp = tmp_path / "old"
    exp.mkdir()
    base = TrainConfig(epochs=8)
    meta = {"space": "focal", "metric": "val_acc", "mode": "max", "num_samples": 5, "grace_period": 2,
            "reduction_factor": 3, "max_failures": 1, "keep_checkpoints": 2, "max_concurrent": None,
            "time_budget_s": None, "cpus_per_trial": 2.0, "gpus_per_trial": None, "seed": 3,
            "base_config": base.to_dict(), "sessions": []}
    (exp / META_FILE).write_text(json.dumps(meta))
    (exp / "experiment_state-2026.json").write_text("{}")
    s = parse_settings(["--resume", "old", "--storage-path", str(tmp_path), "--cpus-per-trial", "1"])
    assert s.resume and s.space == "focal" and s.metric == "val_acc" and s.base == base and s.seed == 3
    assert s.cpus_per_trial == 1.0  # resources may change on resume
    with pytest.raises(UserError, match="drop --epochs, --space"):
        parse_settings(["--resume", "old", "--storage-path", str(tmp_path), "--space", "optim", "--epochs", "3"])
    with pytest.raises(UserError, match="no experiment"):
        parse_settings(["--resume", "nope", "--storage-path", str(tmp_path)])
    with pytest.raises(UserError, match="already exists"):
        check_new_experiment(str(tmp_path), "old")


def test_subcommands_dispatch_to_their_modules():
    for sub in ("export", "ui", "retrain", "verify"):
        proc = subprocess.run([sys.executable, str(REPO / "run_search.py"), sub, "--help"], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, (sub, proc.stderr[-2000:])
        assert f"usage: run_search.py {sub}" in proc.stdout, proc.stdout[:300]
    top = subprocess.run([sys.executable, str(REPO / "run_search.py"), "--help"], capture_output=True, text=True,
                         timeout=120).stdout
    assert all(f"run_search.py {sub}" in top for sub in ("export", "ui", "retrain", "verify"))


def fake_trial(trial_id, status, epoch, value, config=None, error=None, tmp=None):
    error_file = None
    if error:
        error_file = tmp / f"{trial_id}.txt"
        error_file.write_text(f"Failure # 1 (occurred at now)\nTraceback ...\n{error}\n")
    return SimpleNamespace(trial_id=trial_id, status=status, config=config or {}, error_file=error_file and str(error_file),
                           last_result={"epoch": epoch, "macro_f1": value} if epoch else {})


def test_summary_counts_and_picks_the_best_completed_trial(tmp_path):
    base = TrainConfig(epochs=4)
    trials = [
        fake_trial("a", "TERMINATED", 4, 0.30, {"lr": 0.001}),
        fake_trial("b", "TERMINATED", 1, 0.45, {"lr": 0.01}),   # stopped early: a higher, truncated score
        fake_trial("c", "TERMINATED", 4, 0.40, {"lr": 0.002}),
        fake_trial("d", "ERROR", 2, 0.1, {}, error="trainable.tune_entry.TrialDiverged: diverged: loss NaN", tmp=tmp_path),
        fake_trial("e", "ERROR", 0, None, {}, error="RuntimeError: CUDA out of memory", tmp=tmp_path),
    ]
    records = trial_records(trials, base, "macro_f1")
    settings = SimpleNamespace(name="exp", storage_path="/s", space="optim", metric="macro_f1", mode="max", base=base,
                               sampler="tpe", share_prefix=False)
    summary = build_summary(settings, records, wall_time_s=12.5)
    assert tuple(summary) == SUMMARY_KEYS
    assert summary["best_trial_id"] == "c" and summary["best_value"] == 0.40
    assert summary["best_config"] == base.replace(lr=0.002).to_dict()
    assert (summary["num_trials"], summary["num_stopped_early"], summary["num_failed"]) == (5, 1, 2)
    assert summary["epochs_consumed"] == 4 + 1 + 4 + 2
    report = format_report(summary, records, base)
    assert "2 completed, 1 stopped early, 2 failed (1 diverged)" in report
    assert "Best trial c: macro_f1 = 0.4000" in report and "lr=0.002" in report
    assert "diverged: loss NaN" in report and "CUDA out of memory" in report


def toy_space(trial, base):
    return {"lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True)}


toy_space.seed_defaults = lambda base: {"lr": base.lr}


def broken_space(trial, base):
    return {"stage2_epoch": base.epochs + trial.suggest_int("extra", 1, 3)}


def test_spaces_are_checked_before_ray_including_python_ones():
    from tuner.prepare import check_space, resolve_space, seed_point
    from tuner.searcher import BoundSpace

    base = TrainConfig()
    check_space("stage_epochs", base)
    check_space(f"{__name__}:toy_space", base)
    assert seed_point(f"{__name__}:toy_space", base) == {"lr": base.lr}
    assert resolve_space(f"{__name__}:toy_space") is toy_space
    bound = BoundSpace(f"{__name__}:toy_space", base)
    import optuna

    assert set(bound(optuna.create_study().ask())) == {"lr"}
    with pytest.raises(UserError, match="a sampled configuration is invalid.*--stage2-epoch"):
        check_space(f"{__name__}:broken_space", base)
    with pytest.raises(UserError, match="cannot import"):
        check_space(f"{__name__}:missing", base)
    with pytest.raises(UserError, match="unknown search space"):
        check_space("nope", base)


def test_local_gpu_requests_are_checked_before_ray(monkeypatch):
    import torch

    from tuner.prepare import check_local_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("trainable.devices.mps_available", lambda: False)
    check_local_devices(parse_settings([]))  # nothing asked, nothing checked
    with pytest.raises(UserError, match="--gpus-per-trial 0.5: this machine has no GPU"):
        check_local_devices(parse_settings(["--gpus-per-trial", "0.5"]))
    with pytest.raises(UserError, match="--device cuda"):
        check_local_devices(parse_settings(["--device", "cuda"]))


def test_cpus_per_trial_on_a_cluster_is_checked_once_attached():
    s = parse_settings(["--cpus-per-trial", "100", "--address", "auto"])  # the cluster may have them
    assert s.cpus_per_trial == 100


@pytest.mark.parametrize("argv", [["--mode", "sideways"], ["--num-sample", "3"], ["--stor", "x"]])
def test_no_abbreviated_flags(argv, capsys):
    """argparse's prefix matching read `--mode sideways` as --model-type; a partial flag is unknown."""
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(argv)
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {argv[0]}" in capsys.readouterr().err


def test_default_names_are_unique_within_a_second(tmp_path, monkeypatch):
    from tuner.cli import default_name

    monkeypatch.chdir(tmp_path)
    names = {default_name("stage_epochs") for _ in range(50)} | {parse_settings([]).name for _ in range(3)}
    assert len(names) == 53
    assert all(name.startswith("stage_epochs-") for name in names)


def test_an_experiment_directory_is_claimed_once(tmp_path):
    """Two searches that both passed check_new_experiment: only the first mkdir wins."""
    from tuner.experiment import claim_new_experiment, release_claim

    storage = tmp_path / "new" / "results"
    check_new_experiment(str(storage), "same")
    check_new_experiment(str(storage), "same")  # the other search's check, at the same moment
    claimed = claim_new_experiment(str(storage), "same")
    assert claimed == storage / "same" and claimed.is_dir()
    with pytest.raises(UserError, match="created by another search meanwhile; choose another --name"):
        claim_new_experiment(str(storage), "same")
    (claimed / "tuner.pkl").write_bytes(b"written")
    release_claim(claimed)  # a search that wrote into it keeps it
    assert (claimed / "tuner.pkl").is_file()
    (claimed / "tuner.pkl").unlink()
    release_claim(claimed)  # an empty claim is given back
    assert not claimed.exists()


def test_report_says_why_no_trial_scored(tmp_path):
    base = TrainConfig(epochs=4)
    settings = SimpleNamespace(name="exp", storage_path="/s", space="optim", metric="macro_f1", mode="max", base=base,
                               sampler="tpe", share_prefix=False)
    failed = trial_records([fake_trial("a", "ERROR", 0, None, error="RuntimeError: boom", tmp=tmp_path),
                            fake_trial("b", "ERROR", 0, None, error="RuntimeError: bang", tmp=tmp_path)],
                           base, "macro_f1")
    report = format_report(build_summary(settings, failed, 3.0), failed, base)
    assert "nothing to export (all 2 trials failed; their errors are listed below)" in report
    assert "failed trial a: RuntimeError: boom" in report
    unscored = trial_records([fake_trial("c", "TERMINATED", 0, None)], base, "macro_f1")
    report = format_report(build_summary(settings, unscored, 1.0), unscored, base, time_budget_s=1.0)
    assert "the --time-budget of 1 s ran out before any trial reported its first epoch" in report
    assert "errors" not in report


def test_printed_commands_are_shell_quoted():
    import shlex

    from tuner.search import export_command, resume_command

    settings = SimpleNamespace(name="exp", storage_path="/data/my results")
    assert shlex.split(export_command(settings))[3:] == ["--experiment", "exp", "--storage-path",
                                                         "/data/my results", "--out", "best.yaml"]
    assert shlex.split(resume_command(settings, []))[2:] == ["--resume", "exp", "--storage-path", "/data/my results"]
