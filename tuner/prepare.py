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

    import search_spaces

    label = space if isinstance(space, str) else getattr(space, "__name__", repr(space))
    try:
        fn = resolve_space(space)
        if isinstance(space, str) and ":" not in space:
            search_spaces.check(space, base)
    except UserError as exc:
        text = str(exc)
        if isinstance(space, str) and text.startswith(f"{Path(space)}:"):  # a YAML space's errors name its path
            text = f"--space {text}"
        elif not text.startswith(("--space ", "unknown search space")):
            text = f"--space {label}: {text}"
        raise UserError(text) from None
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
        except UserError as exc:
            raise UserError(f"--space {label}: {exc}") from None
        # A Python space (YAML and built-in spaces are refused these fields when they are loaded).
        refused = [search_spaces.unsearchable(key) for key in overrides if search_spaces.unsearchable(key)]
        if refused:
            raise UserError(f"--space {label}: it sets {refused[0]}")
        try:
            base.replace(**overrides).validate()
        except UserError as exc:
            what = "its seed-defaults point" if point and index == 0 else "a sampled configuration"
            raise UserError(f"--space {label}: {what} is invalid with this base config "
                            f"(--epochs {base.epochs}): {exc}") from None
        study.tell(trial, 0.0)


def check_dataset(base: TrainConfig) -> None:
    """The data the base config points at (trainable.data.dataset.validate_data: no decoding, no writes)."""
    from trainable.data.dataset import validate_data

    if not base.demo and not Path(base.train_dir).is_dir():
        raise UserError(f"no dataset at --train-dir {base.train_dir}: point --train-dir, --val-dir, "
                        f"--train-meta and --val-meta at data in the seed layout, or use --demo for the "
                        f"built-in synthetic data")
    validate_data(base)


def prepare_search(settings, hooks) -> None:
    """Check everything a search needs; raise UserError on the first problem. Writes nothing."""
    # The model check imports torch + timm (timm alone pulls in torchvision and torch._dynamo:
    # seconds of CPU and memory the driver never needs): run it in a child process beside the
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


def space_choices(space) -> dict[str, tuple]:
    """The categorical choices of a registered or YAML space, by field ({} for a Python space,
    whose choices cannot be listed)."""
    if not isinstance(space, str) or (":" in space and not space.endswith((".yaml", ".yml"))):
        return {}
    import search_spaces
    from search_spaces._params import Cat

    return {decl.field: decl.choices for decl in search_spaces.get(space).decls if isinstance(decl, Cat)}


def models_to_check(settings) -> list[tuple[str, TrainConfig]]:
    """(what differs from the base, config) for the base model and every other backbone the space
    can choose: a trial with a backbone that cannot be built would otherwise fail after Ray started.
    A backbone is checked with weights when any `pretrained` choice wants them (that build checks
    the architecture too). On --resume the space was checked when the search started."""
    base = model_to_check(settings)
    checks, seen = [("", base)], {(base.backbone, base.pretrained)}
    choices = {} if settings.resume else space_choices(settings.space)
    pretrained = settings.address is None and any(choices.get("pretrained", (base.pretrained,)))
    for backbone in choices.get("backbone", ()):
        if (backbone, pretrained) in seen:
            continue
        seen.add((backbone, pretrained))
        changes = {"backbone": backbone, "pretrained": pretrained}
        what = ", ".join(f"{key}={value}" for key, value in changes.items() if getattr(base, key) != value)
        checks.append((what, base.replace(**changes)))
    return checks


def check_model(settings) -> None:
    """The model check, in this process (imports torch + timm here)."""
    from trainable.model.networks import build_model

    build_model(model_to_check(settings))


class ModelCheck:
    """check_model in a child Python process, started on construction; result() waits for it
    and raises its UserError (cancel() stops it when another check failed first).

    The child gets the configs of models_to_check as JSON on stdin (sent by result(), once the
    space has passed its checks) and answers with one marked line on stdout;
    whatever else it prints (e.g. a weights download) is passed through to this process's
    stdout/stderr when it ends, as check_model in-process would have shown it.
    """

    MARK = "croptune-model-check:"

    def __init__(self, settings):
        import subprocess
        import sys

        root = str(Path(__file__).resolve().parent.parent)  # the child imports tuner/, trainable/ from here
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tuner.prepare import model_check_main; model_check_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        self.settings = settings

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def result(self) -> None:
        import json
        import sys

        checks = models_to_check(self.settings)
        try:
            out, err = self.proc.communicate(json.dumps([cfg.to_dict() for _, cfg in checks]))
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
            what = checks[verdict.get("index", 0)][0]
            if not what:
                raise UserError(verdict["error"])
            raise UserError(f"--space {self.settings.space}: the choice {what}: {verdict['error']}; "
                            f"drop it from the space")


def model_check_main() -> None:
    """The child's side of ModelCheck: build the model of each config on stdin, the base first."""
    import json
    import sys

    from trainable.model.networks import build_model  # first: the import overlaps the parent's other checks

    configs = [TrainConfig.from_dict(values, source="base config") for values in json.loads(sys.stdin.read())]
    verdict = {"error": None}
    for index, cfg in enumerate(configs):
        try:
            if index == 0:
                build_model(cfg)
            else:
                _build_cheaply(cfg)
        except UserError as exc:
            verdict = {"error": str(exc), "index": index}
            break
    sys.stdout.flush()
    print(ModelCheck.MARK + json.dumps(verdict), flush=True)
    sys.stderr.flush()
    # Skip the interpreter's teardown of torch + timm (slow on a busy machine):
    # the parent is waiting for this exit, and there is nothing left to flush or close.
    os._exit(0)


def _build_cheaply(cfg: TrainConfig) -> None:
    """build_model without allocating or initialising weights (on the meta device, so a large
    backbone checks in a fraction of its build time); the same UserErrors (unknown backbone,
    weights missing or not fitting). A model that cannot be built on meta is built for real."""
    import warnings

    import torch

    from trainable.model.networks import build_model

    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")  # loading weights into meta tensors warns that it is a no-op
            build_model(cfg)
    except UserError:
        raise
    except Exception:
        build_model(cfg)


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
