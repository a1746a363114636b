"""The training command as library code: build_parser(), prepare() (every check, nothing written), train(), main().

`python -m trainable` (trainable/__main__.py) runs main(); retrain and the bench call prepare() and train().

Writes to --save-dir: best_custom.pth (best val acc), epoch_N.pth every --save-freq epochs,
last.pth every epoch, interrupted.pth on Ctrl-C, TensorBoard logs in logs/, config.yaml.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from trainable.errors import DivergedError, UserError


def build_parser() -> argparse.ArgumentParser:
    from trainable.cli_config import add_config_arguments

    parser = argparse.ArgumentParser(
        prog="python -m trainable",
        description="Train the 61-class crop-disease classifier once with the staged recipe.",
        allow_abbrev=False,  # `--mode x` must not silently mean --model-type
    )
    add_config_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                        help="reuse a --save-dir that holds an earlier run, removing its checkpoints and logs "
                             "(without it: a --save-dir you give must not hold a run; the default one moves on "
                             "to <dir>-2, -3, ...)")
    return parser


def check_writable(directory: Path) -> None:
    """Fail before training, not after the first epoch, when --save-dir cannot be written."""
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--save-dir {directory}: {probe} is not a writable directory; choose another --save-dir")


def check_model(cfg):
    """Build the model once on the CPU so an unknown backbone or missing weights fail before any write."""
    from trainable.model.networks import build_model

    return build_model(cfg)


def write_config(cfg, path: Path) -> None:
    import yaml

    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, path)


def format_epoch(cfg, metrics: dict) -> str:
    # With --use-ema the [Val] scores are the EMA shadow's; the raw weights' accuracy stands beside them.
    raw = f" (EMA; raw {metrics['val_acc_raw']:.2f}%)" if "val_acc_raw" in metrics else ""
    return (f"Epoch {metrics['epoch']}/{cfg.epochs} | Train Loss {metrics['train_loss']:.4f} | "
            f"Train Acc {metrics['train_acc']:.2f}% | LR {metrics['lr']:.6f} | "
            f"stage {metrics['stage']} | {metrics['image_size']}px\n"
            f"  [Val] Epoch {metrics['epoch']} | Loss {metrics['val_loss']:.4f} | Acc {metrics['val_acc']:.2f}%{raw} | "
            f"TailAcc {metrics['tail_acc']:.2f}% | MacroF1 {metrics['macro_f1']:.3f}")


def prepare(argv: list[str] | None, ns: argparse.Namespace | None = None):
    """Parse, resolve and validate everything a run needs before --save-dir is touched (only the image cache
    is filled, and --overwrite clears the earlier run once every check has passed). Returns (cfg, data, state).

    ns: the command line already parsed by build_parser() or a parser built on it (retrain's), instead of argv."""
    from trainable.cli_config import resolve_config, scaled_note
    from trainable.data.dataset import load_data
    from trainable.devices import select_device
    from trainable.train.checkpoint import (
        check_resume_compatible,
        choose_save_dir,
        clear_run_files,
        load_checkpoint,
    )
    from trainable.train.schedule import describe

    ns = build_parser().parse_args(argv) if ns is None else ns
    state = load_checkpoint(ns.resume) if getattr(ns, "resume", None) else None
    cfg = resolve_config(ns, checkpoint_config=state["config"] if state else None)
    if state is not None and state["epoch"] >= cfg.epochs:
        raise UserError(f"--resume {ns.resume}: the checkpoint already finished epoch {state['epoch']} of "
                        f"--epochs {cfg.epochs}; raise --epochs to train further")
    if state is not None:  # the fields first: it names the flag, before a model build can fail on it
        check_resume_compatible(state, cfg, ns.resume)
    select_device(cfg.device)  # --device cuda without CUDA: one line before the save dir exists
    save_dir, moved, clear = choose_save_dir(cfg.save_dir, explicit="save_dir" in vars(ns),
                                             overwrite=getattr(ns, "overwrite", False), resume=getattr(ns, "resume", None))
    cfg = cfg.replace(save_dir=save_dir)
    check_writable(Path(cfg.save_dir))
    model = check_model(cfg)
    if state is not None:
        check_resume_compatible(state, cfg, ns.resume, model)
    del model
    note = scaled_note(cfg)
    if note:
        print(note)
    print(describe(cfg))
    data = load_data(cfg, progress=True)
    if moved:
        print(moved)
    if clear:
        clear_run_files(Path(save_dir))  # --overwrite, and every check passed: only now remove the earlier run
    return cfg, data, state


def train(cfg, data, state=None, on_epoch=None) -> dict:
    """Run fit() to the end, writing checkpoints and logs; returns the last epoch's metrics."""
    from torch.utils.tensorboard import SummaryWriter

    from trainable.train.checkpoint import save_checkpoint
    from trainable.train.loop import fit

    save_dir = Path(cfg.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, save_dir / "config.yaml")
    writer = SummaryWriter(log_dir=str(save_dir / "logs"))
    last = None
    try:
        for result in fit(cfg, data, state=state, progress=True):
            last = result
            m = result.metrics
            print(format_epoch(cfg, m), flush=True)
            for key in ("train_loss", "val_loss"):
                writer.add_scalar(f"Loss/{key}", m[key], m["epoch"])
            for key in ("train_acc", "val_acc", "tail_acc", "macro_f1"):
                writer.add_scalar(f"Accuracy/{key}", m[key], m["epoch"])
            writer.add_scalar("LR", m["lr"], m["epoch"])
            save_checkpoint(result.state, save_dir / "last.pth")
            if result.is_best:
                save_checkpoint(result.state, save_dir / "best_custom.pth")
                print(f"  ✅ New best val acc: {m['val_acc']:.2f}% | TailAcc {m['tail_acc']:.2f}% | "
                      f"MacroF1 {m['macro_f1']:.3f}")
            if cfg.save_freq and m["epoch"] % cfg.save_freq == 0:
                save_checkpoint(result.state, save_dir / f"epoch_{m['epoch']}.pth")
            if on_epoch is not None:
                on_epoch(result)
    except DivergedError as exc:  # main's run_cli prints it as one `error: diverged:` line, exit 1
        kept = f"; the checkpoints up to epoch {last.epoch} stay in {save_dir}" if last is not None else ""
        raise DivergedError(f"{exc}{kept}") from None
    except KeyboardInterrupt:
        if last is not None:
            save_checkpoint(last.state, save_dir / "interrupted.pth")
            again = shlex.join(["python", "-m", "trainable", "--resume", str(save_dir / "interrupted.pth")])
            print(f"\ninterrupted: saved {save_dir / 'interrupted.pth'} (epoch {last.epoch}); continue with "
                  f"{again}", file=sys.stderr)  # quoted: pasted as printed, a path with a space still works
        raise
    finally:
        writer.close()
    return last.metrics if last else {}


def main(argv: list[str] | None = None) -> int:
    cfg, data, state = prepare(argv)
    metrics = train(cfg, data, state)
    if metrics:
        print(f"done: val acc {metrics['val_acc']:.2f}% | tail acc {metrics['tail_acc']:.2f}% | "
              f"macro-F1 {metrics['macro_f1']:.3f} | checkpoints in {cfg.save_dir}")
    return 0

