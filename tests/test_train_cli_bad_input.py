"""Bad input through `python -m trainable`: one line, exit 2, no traceback, nothing written.

The cases in OWN_PROCESS run the real command (what a user's terminal shows: a warning at
import or a traceback would be a second line); the others run its main() in this process, as
`python -m trainable` does (run_cli), which checks the same code without the ~5 s of a fresh
interpreter importing torch each time.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import corrupt_first_image, delete_first_image, edit_train_csv, replace_row

from trainable.data.demo.dataset import layout_paths, write_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input-data")
    write_synthetic_dataset(root, seed=1, max_per_class=2, min_per_class=1, val_per_class=1, image_size=32)
    return root


def flags_for(root: Path) -> list[str]:
    out = []
    for key, value in layout_paths(root).items():
        out += ["--" + key.replace("_", "-"), str(value)]
    return out


def copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


CASES = {
    "missing data dir": (lambda root, tmp: ["--train-dir", str(tmp / "nope")], "nope"),
    "corrupt image": (lambda root, tmp: corrupt_first_image(root), "cannot be decoded"),
    "missing image file": (lambda root, tmp: delete_first_image(root), "not found"),
    "csv without label column": (
        lambda root, tmp: edit_train_csv(root, lambda ls: [ls[0].replace("label_61", "label"), *ls[1:]]), "label_61"),
    "label outside 0..60": (lambda root, tmp: edit_train_csv(root, lambda ls: replace_row(ls, "label_61", "75")), "75"),
    "path escaping the data root": (
        lambda root, tmp: edit_train_csv(root, lambda ls: replace_row(ls, "image", "../../etc/passwd")), "stay inside"),
    "stage epochs out of order": (lambda root, tmp: ["--stage2-epoch", "2", "--stage3-epoch", "1"], "out of order"),
    "unknown backbone": (lambda root, tmp: ["--backbone", "resnet_does_not_exist"], "unknown --backbone"),
    "unwritable save dir": (lambda root, tmp: ["--save-dir", str(_a_file(tmp) / "run")], "not a writable directory"),
    "checkpoint that is not a checkpoint": (
        lambda root, tmp: ["--resume", str(_not_a_checkpoint(tmp))], "not a croptune checkpoint"),
    "pretrained weights unavailable offline": (
        lambda root, tmp: ["--pretrained", "--backbone", "resnet18"], "--pretrained-path"),
    "non-finite --lr": (lambda root, tmp: ["--lr", "inf"], "--lr=inf is not a finite number"),
    "non-finite value in --config": (lambda root, tmp: ["--config", str(_yaml(tmp, "lr: .nan\n"))],
                                     "lr=nan is not a finite number"),
    "boolean for a number in --config": (lambda root, tmp: ["--config", str(_yaml(tmp, "epochs: true\n"))],
                                         "epochs=True is not a valid int"),
    "binary --config": (lambda root, tmp: ["--config", str(_binary(tmp))], "is not a text file"),
    "--config of a directory": (lambda root, tmp: ["--config", str(tmp)], "is a directory"),
    "resume: inside --config": (lambda root, tmp: ["--config", str(_yaml(tmp, "resume: x/last.pth\n"))],
                                "pass --resume x/last.pth on the command line"),
    "--device cuda without CUDA": (lambda root, tmp: ["--device", "cuda"], "CUDA is not available"),
    "--resume with another --backbone": (
        lambda root, tmp: ["--resume", str(_a_checkpoint(root, tmp)), "--backbone", "resnet18"],
        "--backbone resnet18 (the checkpoint has test_resnet) changes the model's architecture"),
}


def _a_file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("a file where a directory should be")
    return path


def _not_a_checkpoint(tmp: Path) -> Path:
    path = tmp / "weights.pth"
    torch.save({"model": torch.zeros(3)}, path)
    return path


def _yaml(tmp: Path, text: str) -> Path:
    path = tmp / "config.yaml"
    path.write_text(text)
    return path


def _binary(tmp: Path) -> Path:
    path = tmp / "best.yaml"
    path.write_bytes(bytes(range(256)) * 8)  # e.g. a checkpoint passed as --config by mistake
    return path


def _a_checkpoint(root: Path, tmp: Path) -> Path:
    """A croptune checkpoint of a test_resnet run on this data (epoch 1 of 2), saved where it would be."""
    from trainable.config import TrainConfig, scale_schedule
    from trainable.model.networks import build_model
    from trainable.train.checkpoint import FORMAT, SEED_KEYS, save_checkpoint

    cfg = TrainConfig(**{k: str(v) for k, v in layout_paths(root).items()}, backbone="test_resnet",
                      pretrained=False, image_size=32, progressive_image_size=32, save_dir=str(tmp / "earlier"))
    cfg = TrainConfig.from_dict(scale_schedule(cfg.to_dict(), cfg.epochs, 2)).validate()
    model = build_model(cfg)
    state = {key: 0.0 for key in SEED_KEYS}
    state.update(format=FORMAT, epoch=1, model_state_dict=model.state_dict(), optimizer_state_dict={},
                 config=cfg.to_dict())
    return save_checkpoint(state, tmp / "earlier" / "last.pth")


# a data error found while decoding, and the model check reaching for weights offline
OWN_PROCESS = {"corrupt image", "pretrained weights unavailable offline"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, dataset, tmp_path, monkeypatch, cli_in_process):
    if case == "--device cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    root = copy_dataset(dataset, tmp_path / "data")
    make, words = CASES[case]
    extra = make(root, tmp_path) or []
    save_dir = tmp_path / "save"
    cache = tmp_path / "cache"
    cache.mkdir()
    argv = [*flags_for(root), "--backbone", "test_resnet", "--no-pretrained", "--image-size", "32",
            "--progressive-image-size", "32", "--epochs", "2", "--num-workers", "0", "--save-dir", str(save_dir),
            *extra]
    if case in OWN_PROCESS:
        env = {**os.environ, "CROPTUNE_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-m", "trainable", *argv], capture_output=True, text=True, env=env,
                              timeout=120)
        code, stderr = proc.returncode, proc.stderr
    else:
        import trainable.cli as command

        def got_past_the_checks(*args, **kwargs):  # fail now, not after a whole training run
            raise AssertionError("bad input reached training")

        monkeypatch.setattr(command, "train", got_past_the_checks)
        monkeypatch.setenv("CROPTUNE_CACHE_DIR", str(cache))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.chdir(tmp_path)
        main = command.main
        code, _, stderr = cli_in_process(main, argv)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert words in lines[0]
    assert "Traceback" not in stderr
    assert not save_dir.exists()
    assert [p for p in cache.rglob("*") if p.is_file()] == []
