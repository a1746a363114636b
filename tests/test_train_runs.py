"""`python -m trainable` run by run: where each run writes, and how a diverged run ends.

Runs go through main() in this process, wrapped as the command wraps it (run_cli), on a tiny
synthetic dataset in the seed layout, in a folder of the test's own (the default --save-dir is
relative: checkpoints/task1_baseline).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from trainable.data.demo.dataset import layout_paths, write_synthetic_dataset
from trainable.train.checkpoint import load_checkpoint

DEFAULT = Path("checkpoints/task1_baseline")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs-data")
    write_synthetic_dataset(root, seed=1, max_per_class=2, min_per_class=1, val_per_class=1, image_size=32)
    return root


def tiny(root: Path, epochs: int = 1) -> list[str]:
    flags = []
    for key, value in layout_paths(root).items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags + ["--backbone", "test_resnet", "--no-pretrained", "--image-size", "32", "--progressive-image-size",
                    "32", "--num-workers", "0", "--device", "cpu", "--epochs", str(epochs)]


def digests(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_runs_never_share_a_save_dir(dataset, tmp_path, monkeypatch, cli_in_process):
    from trainable.cli import main

    monkeypatch.chdir(tmp_path)
    code, out, err = cli_in_process(main, tiny(dataset))
    assert code == 0, err
    first = digests(DEFAULT)
    assert {"config.yaml", "last.pth", "best_custom.pth"} <= set(first)

    # the same command again: the default save dir moves on, and says where
    code, out, err = cli_in_process(main, tiny(dataset))
    assert code == 0, err
    assert f"note: {DEFAULT} holds an earlier run; this run writes to {DEFAULT}-2" in out
    assert f"checkpoints in {DEFAULT}-2" in out
    assert digests(DEFAULT) == first
    second = Path(f"{DEFAULT}-2")
    assert load_checkpoint(second / "last.pth")["config"]["save_dir"] == str(second)
    assert len(list((second / "logs").glob("events.out.tfevents.*"))) == 1

    # a --save-dir the user typed is not silently changed: refused, one line, nothing touched
    code, out, err = cli_in_process(main, [*tiny(dataset), "--save-dir", str(DEFAULT)])
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: --save-dir {DEFAULT} already holds a run (best_custom.pth); pass --overwrite to replace it, "
        f"--resume {DEFAULT / 'last.pth'} to continue it, or choose another --save-dir"]
    assert digests(DEFAULT) == first

    # --resume of a run's own checkpoint continues in its directory (no -3)
    code, out, err = cli_in_process(main, ["--resume", str(second / "last.pth"), "--epochs", "2"])
    assert code == 0, err
    assert "Epoch 2/2" in out and "Epoch 1/2" not in out
    assert load_checkpoint(second / "last.pth")["epoch"] == 2
    assert not Path(f"{DEFAULT}-3").exists()

    # --overwrite: the earlier run's files go (one TensorBoard file, no stale checkpoint), others' stay
    (DEFAULT / "notes.txt").write_text("the user's own file")
    (DEFAULT / "epoch_5.pth").write_bytes(b"a stale checkpoint of the earlier run")
    code, out, err = cli_in_process(main, [*tiny(dataset), "--save-dir", str(DEFAULT), "--overwrite", "--seed", "7"])
    assert code == 0, err
    assert not (DEFAULT / "epoch_5.pth").exists() and (DEFAULT / "notes.txt").is_file()
    assert len(list((DEFAULT / "logs").glob("events.out.tfevents.*"))) == 1
    assert load_checkpoint(DEFAULT / "last.pth")["config"]["seed"] == 7


def test_a_diverged_run_is_one_line_exit_1_and_keeps_its_checkpoints(dataset, tmp_path, cli_in_process):
    from trainable.cli import main

    save = tmp_path / "run"
    # epoch 1 trains the last block + head, epoch 2 everything: at lr 1e6 the loss overflows there
    argv = [*tiny(dataset, epochs=2), "--stage2-epoch", "0", "--stage3-epoch", "1", "--lr", "1e6",
            "--save-dir", str(save)]
    code, out, err = cli_in_process(main, argv)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: diverged: ") and "at epoch 2" in lines[0], err
    assert lines[0].endswith(f"the checkpoints up to epoch 1 stay in {save}")
    assert "Traceback" not in err
    assert load_checkpoint(save / "last.pth")["epoch"] == 1


def test_resume_refuses_a_model_of_another_shape_even_without_its_config():
    from trainable.config import TrainConfig
    from trainable.errors import UserError
    from trainable.model.networks import build_model
    from trainable.train.checkpoint import check_resume_compatible

    saved = TrainConfig(backbone="test_resnet", pretrained=False, model_type="multitask")
    state = {"config": {}, "model_state_dict": build_model(saved).state_dict()}  # e.g. a checkpoint's config lost
    cfg = saved.replace(model_type="baseline")
    with pytest.raises(UserError, match=r"^--resume a.pth: the checkpoint's model does not match this "
                                        r"configuration \(\d+ parameter\(s\) differ, e\.g\. "):
        check_resume_compatible(state, cfg, "a.pth", build_model(cfg))
    check_resume_compatible(state, saved, "a.pth", build_model(saved))  # the same shapes: accepted
