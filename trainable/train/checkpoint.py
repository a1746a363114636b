"""One checkpoint restores a run exactly; it is written atomically and read with weights_only=True."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from trainable.errors import UserError

FORMAT = "croptune-checkpoint-v1"
# The seed script's keys, which every checkpoint carries (plus EMA, scheduler, scaler, RNG, ...).
SEED_KEYS = ("epoch", "model_state_dict", "optimizer_state_dict", "best_val_acc", "train_loss",
             "train_acc", "val_loss", "val_acc", "tail_mean_acc", "macro_f1")


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write to a temp file in the same directory, fsync, then rename over `path`.

    A process killed mid-write leaves the previous file at `path` intact, and its partial temp
    file behind; the next successful save of `path` removes such leftovers (one writer per
    path: a trial's restarted worker, or the same training resumed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        leftover.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a croptune checkpoint safely; anything else is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or truncated files
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {path} is not a croptune checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not a croptune checkpoint (no '{FORMAT}' marker)")
    missing = [key for key in SEED_KEYS if key not in state]
    if missing:
        raise UserError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return state


# Fields that shape the model's parameters: a checkpoint only loads into the same architecture.
ARCHITECTURE_FIELDS = ("model_type", "backbone", "fewshot_hidden", "use_cosine_classifier", "use_center_loss")
# What a run writes into its save dir (other files there are not ours and are left alone).
RUN_FILES = ("config.yaml", "best_custom.pth", "last.pth", "interrupted.pth", "epoch_*.pth", "logs")


def check_resume_compatible(state: dict, cfg, path, model=None) -> None:
    """Refuse a resume whose flags change the checkpoint's architecture (before anything is written)."""
    from trainable.config import flag

    saved = state.get("config") or {}
    changed = [f"{flag(name)} {getattr(cfg, name)} (the checkpoint has {saved[name]})"
               for name in ARCHITECTURE_FIELDS if name in saved and saved[name] != getattr(cfg, name)]
    if changed:
        raise UserError(f"--resume {path}: {'; '.join(changed)} changes the model's architecture; drop those "
                        f"flags to continue the run, or start a new run without --resume")
    if model is not None:  # anything else that changes a parameter's shape (e.g. a checkpoint from another build)
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in state["model_state_dict"].items()}
        if ours != theirs:
            diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            raise UserError(f"--resume {path}: the checkpoint's model does not match this configuration "
                            f"({len(diff)} parameter(s) differ, e.g. {diff[0]}); start a new run without --resume")


def run_files(directory: Path) -> list[Path]:
    """The files of an earlier run in `directory` (what train() writes there)."""
    if not directory.is_dir():
        return []
    return sorted(p for pattern in RUN_FILES for p in directory.glob(pattern))


def choose_save_dir(save_dir: str, *, explicit: bool, overwrite: bool,
                    resume: str | None) -> tuple[str, str | None, bool]:
    """(where this run writes, a note when that is not `save_dir`, whether to clear it first); writes nothing.

    A run never mixes its files with another's: resuming from a checkpoint inside the directory
    continues there; --overwrite reuses it, cleared; a --save-dir the user typed that holds a run
    is refused; the default (or a --config's) save dir moves on to `<dir>-2`, `-3`, ...
    """
    directory = Path(save_dir)
    found = run_files(directory)
    if resume and Path(resume).resolve().parent == directory.resolve():
        return save_dir, None, False
    if not found or overwrite:
        return save_dir, None, bool(found)
    if explicit:
        raise UserError(f"--save-dir {save_dir} already holds a run ({found[0].name}); pass --overwrite to replace "
                        f"it, --resume {directory / 'last.pth'} to continue it, or choose another --save-dir")
    n = 2
    while run_files(Path(f"{save_dir}-{n}")):
        n += 1
    chosen = f"{save_dir}-{n}"
    return chosen, f"note: {save_dir} holds an earlier run; this run writes to {chosen} (--save-dir to choose)", False


def clear_run_files(directory: Path) -> None:
    """--overwrite: remove an earlier run's files (only those a run writes) so the two do not mix."""
    import shutil

    for path in run_files(directory):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
