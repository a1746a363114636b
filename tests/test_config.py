import argparse

import pytest

from trainable.cli_config import DEMO_BACKBONE, add_config_arguments, resolve_config
from trainable.config import DEMO_WEIGHTS, SCHEDULE_FIELDS, TrainConfig, scale_schedule, weights_file
from trainable.errors import UserError

SEED_FLAG_DEFAULTS = {
    "train_dir": "data/cleaned/train", "val_dir": "data/cleaned/val",
    "train_meta": "data/cleaned/metadata/train_metadata.csv",
    "val_meta": "data/cleaned/metadata/val_metadata.csv",
    "class_weights": "data/cleaned/metadata/class_weights.csv",
    "model_type": "baseline", "backbone": "resnet50", "pretrained": True, "dropout": 0.3, "image_size": 224,
    "epochs": 50, "batch_size": 32, "lr": 5e-4, "weight_decay": 1e-4, "label_smoothing": 0.05,
    "optimizer": "adamw", "scheduler": "cosine", "use_amp": True, "loss_type": "weighted_ce",
    "use_class_weights": True, "balance_sampler": False, "mixup_alpha": 0.4, "mixup_prob": 0.7,
    "cutmix_alpha": 0.6, "cutmix_prob": 0.5, "use_ema": False, "ema_decay": 0.999, "stage2_epoch": 10,
    "stage3_epoch": 20, "smoothing_decay_epoch1": 12, "smoothing_decay_epoch2": 18,
    "disable_sampler_epoch": 15, "lr_restart_epoch": 25, "tail_focal_epoch": 18,
    "progressive_resize_epoch": 30, "progressive_image_size": 256, "final_clean_epoch": 40,
    "mixup_decay_epoch1": 10, "mixup_decay_epoch2": 12, "mixup_disable_epoch": 15,
    "cutmix_disable_epoch": 10, "use_cosine_classifier": False, "use_center_loss": False,
    "center_loss_weight": 0.01, "center_update_epoch": 35, "fewshot_freeze_backbone": True,
    "fewshot_hidden": 512, "fewshot_dropout": 0.5, "fewshot_head_lr_scale": 5.0, "num_workers": 4,
    "seed": 42, "save_dir": "checkpoints/task1_baseline", "save_freq": 5, "log_interval": 10, "resume": None,
    "focal_gamma": 1.5, "tail_fraction": 0.25, "warmup_epochs": 5, "grad_accum_steps": 1, "grad_clip": 1.0,
    "pretrained_path": None, "device": "auto", "demo": False,
}


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return resolve_config(parser.parse_args(list(argv)), prepare_demo=False)


def test_every_seed_flag_has_its_default():
    cfg = TrainConfig()
    for name, value in SEED_FLAG_DEFAULTS.items():
        assert getattr(cfg, name) == value, name
    cfg.validate()


def test_boolean_flags_have_no_forms():
    cfg = parse("--no-pretrained", "--no-use-amp", "--use-ema", "--balance-sampler")
    assert (cfg.pretrained, cfg.use_amp, cfg.use_ema, cfg.balance_sampler) == (False, False, True, True)


@pytest.mark.parametrize("argv, words", [
    (("--stage2-epoch", "20", "--stage3-epoch", "20"), "out of order"),
    (("--stage3-epoch", "60"), "beyond --epochs 50"),
    (("--mixup-prob", "1.5"), "probability"),
    (("--mixup-decay-epoch1", "14", "--mixup-decay-epoch2", "12"), "out of order"),
    (("--ema-decay", "1.0"), "ema-decay"),
    (("--loss-type", "multitask"), "--model-type multitask"),
    (("--tail-fraction", "0"), "tail-fraction"),
])
def test_validate_rejects_impossible_settings(argv, words):
    with pytest.raises(UserError, match=words.replace("-", r"\-")):
        parse(*argv)


def test_schedule_scales_with_epochs_when_none_given():
    cfg = parse("--epochs", "25")
    assert (cfg.stage2_epoch, cfg.stage3_epoch, cfg.lr_restart_epoch, cfg.final_clean_epoch) == (5, 10, 13, 20)
    assert cfg.warmup_epochs == 3  # 5 * 25/50 = 2.5: halves round up


def test_explicit_schedule_epochs_are_kept_others_scale():
    cfg = parse("--epochs", "20", "--stage2-epoch", "3")
    assert cfg.stage2_epoch == 3 and cfg.stage3_epoch == 8


def test_scaling_keeps_order_on_tiny_runs():
    for epochs in range(1, 13):
        values = scale_schedule(TrainConfig().to_dict(), 50, epochs)
        cfg = TrainConfig.from_dict(values).validate()
        assert cfg.stage2_epoch < cfg.stage3_epoch <= epochs
        assert all(getattr(cfg, f) <= epochs for f in SCHEDULE_FIELDS)


def test_yaml_config_then_flags(tmp_path):
    saved = scale_schedule(TrainConfig(lr=0.01).to_dict(), 50, 12)
    saved.update(stage2_epoch=3, stage3_epoch=6)
    import yaml
    path = tmp_path / "best.yaml"
    path.write_text("# exported\n" + yaml.safe_dump(saved))
    cfg = parse("--config", str(path), "--lr", "0.02")
    assert (cfg.epochs, cfg.stage2_epoch, cfg.lr) == (12, 3, 0.02)
    longer = parse("--config", str(path), "--epochs", "24")
    assert (longer.stage2_epoch, longer.stage3_epoch) == (6, 12)


def test_bad_yaml_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        parse("--config", str(path))
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(UserError, match="unknown field"):
        parse("--config", str(path))


def test_demo_recipe_on_given_data_does_not_generate_the_demo_dataset(tmp_path, croptune_cache):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = [f"--{k.replace('_', '-')}={tmp_path / k}" for k in ("train_dir", "val_dir", "train_meta", "val_meta",
                                                                 "class_weights")]
    (tmp_path / "class_weights").write_text("label_61,weight\n")  # a typed --class-weights must exist
    cfg = resolve_config(parser.parse_args(["--demo", *flags]))
    assert cfg.demo and cfg.image_size == 48 and cfg.train_meta == str(tmp_path / "train_meta")
    assert list(croptune_cache.iterdir()) == []  # nothing generated: every path was given


def test_demo_recipe_is_cpu_sized():
    cfg = parse("--demo")
    assert cfg.demo and cfg.pretrained and cfg.epochs == 12 and cfg.image_size == 48
    # the offline backbone, through the user's flag, by a name that survives a moved checkout
    assert cfg.pretrained_path == DEMO_WEIGHTS and weights_file(cfg.pretrained_path) == str(DEMO_BACKBONE)
    # the seed's staging scaled from 50 to 12 epochs: warmup, head only, partial, full
    assert (cfg.warmup_epochs, cfg.stage2_epoch, cfg.stage3_epoch) == (1, 2, 5)
    assert (cfg.disable_sampler_epoch, cfg.tail_focal_epoch, cfg.lr_restart_epoch) == (4, 4, 6)
    assert (cfg.progressive_resize_epoch, cfg.final_clean_epoch) == (7, 10)
    assert cfg.balance_sampler and not cfg.use_class_weights  # one way of balancing, not two


def test_demo_without_pretrained_is_the_from_scratch_recipe(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = [f"--{k.replace('_', '-')}={tmp_path / k}" for k in ("train_dir", "val_dir", "train_meta", "val_meta",
                                                                 "class_weights")]
    (tmp_path / "class_weights").write_text("label_61,weight\n")  # a typed --class-weights must exist
    cfg = resolve_config(parser.parse_args(["--demo", "--no-pretrained", *flags]))
    # no features to protect: partial unfreezing at once, everything trains from the second epoch
    assert not cfg.pretrained and (cfg.stage2_epoch, cfg.stage3_epoch, cfg.warmup_epochs) == (0, 1, 0)
    assert cfg.lr_restart_epoch == 6  # the rest keeps the seed's shape
    kept = resolve_config(parser.parse_args(["--demo", "--no-pretrained", "--warmup-epochs", "2", *flags]))
    assert (kept.stage2_epoch, kept.warmup_epochs) == (0, 2)  # a flag given still wins
    later = resolve_config(parser.parse_args(["--demo", "--no-pretrained", "--stage2-epoch", "3", *flags]))
    assert (later.stage2_epoch, later.stage3_epoch) == (3, 5)  # not stage 3 pinned before the given stage 2


@pytest.mark.parametrize("argv, message", [
    (("--lr", "inf"), "--lr=inf is not a finite number"),
    (("--ema-decay", "nan"), "--ema-decay=nan is not a finite number"),
    (("--grad-clip=-inf",), "--grad-clip=-inf is not a finite number"),
])
def test_non_finite_knobs_from_flags_are_rejected(argv, message):
    with pytest.raises(UserError, match=message):
        parse(*argv)


@pytest.mark.parametrize("text, message", [
    ("lr: .inf\n", r"lr=inf is not a finite number"),
    ("mixup_alpha: .nan\n", r"mixup_alpha=nan is not a finite number"),
    ("epochs: .inf\n", r"epochs=inf is not a valid int"),
    ("epochs: true\n", r"epochs=True is not a valid int"),
    ("lr: false\n", r"lr=False is not a valid float"),
])
def test_bad_numbers_in_a_config_file_are_rejected(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=rf"^--config {path}: {message}"):
        parse("--config", str(path))


def test_validate_rejects_non_finite_floats_set_in_code():
    with pytest.raises(UserError, match="--focal-gamma=inf: must be a finite number"):
        TrainConfig(focal_gamma=float("inf")).validate()


def test_a_config_with_only_epochs_scales_the_schedule_as_the_flag_does(tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text("epochs: 2\n")
    assert parse("--config", str(path)) == parse("--epochs", "2")
    path.write_text("epochs: 20\nstage2_epoch: 3\n")  # a switch-point given in the file is kept, as a flag is
    assert parse("--config", str(path)) == parse("--epochs", "20", "--stage2-epoch", "3")
    demo = tmp_path / "demo.yaml"
    demo.write_text("demo: true\nepochs: 6\n")
    assert parse("--config", str(demo)) == parse("--demo", "--epochs", "6")


def test_config_that_is_a_directory_binary_or_asks_to_resume(tmp_path):
    with pytest.raises(UserError, match=rf"^--config {tmp_path} is a directory; pass the YAML file itself"):
        parse("--config", str(tmp_path))
    binary = tmp_path / "model.pth"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match=rf"^--config {binary} is not a text file \(not UTF-8\)"):
        parse("--config", str(binary))
    resume = tmp_path / "resume.yaml"
    resume.write_text("epochs: 4\nresume: runs/a/last.pth\n")
    with pytest.raises(UserError, match=r"`resume: runs/a/last.pth` is not read from a config file; "
                                        r"pass --resume runs/a/last.pth on the command line"):
        parse("--config", str(resume))
    resume.write_text("epochs: 4\nresume: null\n")  # what every exported config carries
    assert parse("--config", str(resume)).epochs == 4


@pytest.mark.parametrize("command", ["trainable", "retrain"])
def test_flags_are_never_abbreviated(command, capsys):
    if command == "trainable":
        from trainable.cli import build_parser
    else:
        from tuner.retrain import build_parser
    for argv in (["--mode", "multitask"], ["--epoch", "3"], ["--overwr"]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 2
        assert f"unrecognized arguments: {argv[0]}" in capsys.readouterr().err
    assert build_parser().parse_args(["--model-type", "multitask"]).model_type == "multitask"


def test_a_saved_demo_config_finds_the_backbone_from_anywhere(tmp_path, monkeypatch):
    """A demo config names its weights `demo`, not a path into the checkout that wrote it: a search
    keeps the name (paths are made absolute for the trials) and the model loads the shipped file."""
    import yaml

    from trainable.model.networks import build_model
    from tuner.cli import absolute_paths

    saved = tmp_path / "best.yaml"
    saved.write_text(yaml.safe_dump(parse("--demo").to_dict()))
    monkeypatch.chdir(tmp_path)
    cfg = absolute_paths(parse("--config", str(saved)))
    assert cfg.pretrained_path == DEMO_WEIGHTS
    from safetensors.torch import load_file

    loaded = build_model(cfg).backbone.state_dict()  # the shipped weights, not a failed lookup of ./demo
    assert all(loaded[k].equal(v) for k, v in load_file(str(DEMO_BACKBONE)).items())
    assert absolute_paths(cfg.replace(pretrained_path="w.pth")).pretrained_path == str(tmp_path / "w.pth")
