"""Everything checked before Ray starts: experiment directory, data, search space, hooks.

A problem here is a UserError (one line, exit 2) and nothing has been written: no
experiment directory, no Ray session, no tracking run.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from trainable.config import TrainConfig
from trainable.errors import UserError
from tuner.experiment import check_new_experiment, read_meta

SPACE_PROBES = 5  # sampled configurations checked against TrainConfig.validate() before the search


def resolve_space(space):
    """The define-by-run function `fn(trial, base) -> overrides` for a --space value.

    A registered name or a YAML path goes to search_spaces.get(); `package.module:function`
    names a Python function (custom spaces, tests); a callable is used as it is.
    """
    if callable(space):
        return space
    if ":" in space and not space.endswith((".yaml", ".yml")):
        module_name, _, attr = space.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"--space {space}: cannot import it ({exc})") from None
    import search_spaces

    return search_spaces.get(space)


def seed_point(space, base: TrainConfig) -> dict | None:
    """The Optuna parameters that reproduce the seed recipe (evaluated as the first trial)."""
    if callable(space) or (":" in space and not space.endswith((".yaml", ".yml"))):
        fn = resolve_space(space)
        defaults = getattr(fn, "seed_defaults", None)
        return defaults(base) if defaults else None
    import search_spaces

    return search_spaces.seed_defaults(base, space)


def check_space(space, base: TrainConfig, seed: int = 0) -> None:
    """Sample the space a few times (and its seed point) and validate every resulting config."""
    import optuna

    fn = resolve_space(space)
    label = space if isinstance(space, str) else getattr(space, "__name__", repr(space))
    if isinstance(space, str) and ":" not in space:
        import search_spaces

        try:
            search_spaces.check(space, base)
        except UserError as exc:
            raise UserError(f"--space {label}: {exc}") from None
    logging.getLogger("optuna").setLevel(logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    point = seed_point(space, base)
    if point:
        study.enqueue_trial(point)
    for index in range(SPACE_PROBES + (1 if point else 0)):
        trial = study.ask()
        try:
            overrides = fn(trial, base)
            if not isinstance(overrides, dict):
                raise UserError(f"returned {type(overrides).__name__}, not a dict of TrainConfig overrides")
            base.replace(**overrides).validate()
        except UserError as exc:
            what = "its seed-defaults point" if point and index == 0 else "a sampled configuration"
            raise UserError(f"--space {label}: {what} is invalid with this base config "
                            f"(--epochs {base.epochs}): {exc}") from None
        study.tell(trial, 0.0)


def check_dataset(base: TrainConfig) -> None:
    """The data the base config points at (trainable.data.validate_data: no decoding, no writes)."""
    from trainable.data import validate_data

    if not base.demo and not Path(base.train_dir).is_dir():
        raise UserError(f"no dataset at --train-dir {base.train_dir}: point --train-dir, --val-dir, "
                        f"--train-meta and --val-meta at data in the seed layout, or use --demo for the "
                        f"built-in synthetic data")
    validate_data(base)


def prepare_search(settings, hooks) -> None:
    """Check everything a search needs; raise UserError on the first problem. Writes nothing."""
    # The model check imports torch + timm (timm alone pulls in torchvision and torch._dynamo:
    # seconds of CPU, ~200 MiB RSS on top of torch's ~700): run it in a child process beside the
    # other checks, so they overlap and the driver never holds timm (only the trials need it).
    # Its verdict is read last, so the first problem reported is the same as when the checks
    # ran one after the other.
    model_check = ModelCheck(settings)
    try:
        if settings.resume:
            read_meta(settings.storage_path, settings.name)
        else:
            check_new_experiment(settings.storage_path, settings.name)
        check_dataset(settings.base)
        if not settings.resume:
            check_space(settings.space, settings.base, seed=settings.seed)
        if settings.address is None:
            check_local_devices(settings)
        for hook in hooks:
            hook.validate(settings)
    except BaseException:
        model_check.cancel()
        raise
    model_check.result()


def model_to_check(settings) -> TrainConfig:
    """The config whose model the search must be able to build before Ray starts.

    The base config's model builds, as `python -m trainable` checks before it writes: an unknown
    --backbone, a --pretrained-path that is not a weights file or weights that are neither cached
    nor downloadable would otherwise fail every trial after Ray started. On a cluster (--address)
    only the backbone is checked: the nodes, not this machine, hold the weights."""
    base = settings.base
    return base if settings.address is None else base.replace(pretrained=False, pretrained_path=None)


def check_model(settings) -> None:
    """The model check, in this process (imports torch + timm here)."""
    from trainable.models import build_model

    build_model(model_to_check(settings))


class ModelCheck:
    """check_model in a child Python process, started on construction; result() waits for it
    and raises its UserError (cancel() stops it when another check failed first).

    The child gets the config as JSON on stdin and answers with one marked line on stdout;
    whatever else it prints (e.g. a weights download) is passed through to this process's
    stdout/stderr when it ends, as check_model in-process would have shown it.
    """

    MARK = "croptune-model-check:"

    def __init__(self, settings):
        import json
        import subprocess
        import sys

        root = str(Path(__file__).resolve().parent.parent)  # the child imports tuner/, trainable/ from here
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tuner.prepare import model_check_main; model_check_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        self.payload = json.dumps(model_to_check(settings).to_dict())

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def result(self) -> None:
        import json
        import sys

        try:
            out, err = self.proc.communicate(self.payload)
        except BaseException:  # Ctrl-C while waiting: do not leave the child behind
            self.cancel()
            raise
        lines = out.splitlines()
        verdict = json.loads(lines.pop()[len(self.MARK):]) if lines and lines[-1].startswith(self.MARK) else None
        if lines:
            print("\n".join(lines), flush=True)
        if err:
            sys.stderr.write(err)
            sys.stderr.flush()
        if verdict is None:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit code {self.proc.returncode}"
            raise RuntimeError(f"the model check (building the base config's model) failed: {last}")
        if verdict.get("error"):
            raise UserError(verdict["error"])


def model_check_main() -> None:
    """The child's side of ModelCheck: build the model of the config on stdin."""
    import json
    import sys

    from trainable.models import build_model  # first: the import overlaps the parent's other checks

    cfg = TrainConfig.from_dict(json.loads(sys.stdin.read()), source="base config")
    try:
        build_model(cfg)
        verdict = {"error": None}
    except UserError as exc:
        verdict = {"error": str(exc)}
    sys.stdout.flush()
    print(ModelCheck.MARK + json.dumps(verdict), flush=True)
    sys.stderr.flush()
    # Skip the interpreter's teardown of torch + timm (a second or more on a busy machine):
    # the parent is waiting for this exit, and there is nothing left to flush or close.
    os._exit(0)


def check_local_devices(settings) -> None:
    """An explicit GPU request on this machine that it cannot meet (imports torch only then)."""
    device, gpus = settings.base.device, settings.gpus_per_trial
    if device not in ("cuda", "mps") and not gpus:
        return
    from trainable.devices import mps_available, select_device

    if device in ("cuda", "mps"):
        select_device(device)  # UserError naming the flag when it is not there
    import torch

    if gpus and device != "cpu" and not torch.cuda.is_available() and not mps_available():
        raise UserError(f"--gpus-per-trial {gpus:g}: this machine has no GPU; drop the flag, or use "
                        f"--address to run on a cluster with GPUs")
