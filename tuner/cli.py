"""`run_search.py` arguments -> SearchSettings (validated), with no Ray or torch import.

Parsing stays light so `run_search.py --help` is instant; everything heavy (data checks,
space checks, Ray) happens in tuner.search after parsing.

Every TrainConfig flag is accepted too (trainable.cli_config), and changes the base config
that each trial's overrides are applied to. Two names are shared with TrainConfig on
purpose: `--seed` seeds both the searcher and every trial's training (one number makes the
whole search reproducible), and `--resume NAME` here continues a search (a trial's own
resume comes from Tune's checkpoints, so TrainConfig's `resume` is not a search flag).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainable._compat import move_group_last
from trainable.config import DEMO_WEIGHTS, TrainConfig
from trainable.errors import UserError
from tuner.tracking.hooks import add_search_arguments

METRICS = ("macro_f1", "val_acc", "tail_acc")
DEFAULTS = {
    "space": "stage_epochs",
    "metric": "macro_f1",
    "num_samples": 20,             # DEMO_NUM_SAMPLES with --demo
    "max_concurrent": None,
    "time_budget": None,
    "grace_period": None,          # default_grace(base)
    "reduction_factor": 4,
    "cpus_per_trial": None,
    "gpus_per_trial": None,
    "storage_path": "ray_results",
    "name": None,                  # <space>-<timestamp>
    "max_failures": 2,
    "keep_checkpoints": 2,
    "address": None,
    "sampler": "tpe",
    "share_prefix": True,
}
# The demo search's trials: enough for ASHA at rf 4 to rank, few enough for minutes on a laptop (bench P4).
DEMO_NUM_SAMPLES = 12
# Flags that still mean something when continuing a search with --resume: where it runs, and where
# it logs (tuner.tracking.hooks' flags). The rest (space, metric, scheduler, searcher, base config,
# and --max-concurrent with Tune's TuneConfig) is restored with the experiment.
RESUME_FLAGS = {"storage_path", "address", "cpus_per_trial", "gpus_per_trial",
                "mlflow_uri", "mlflow_experiment", "no_mlflow"}
SUBCOMMANDS = {
    "ui": "start the MLflow UI for the tracking store (see `run_search.py ui --help`)",
    "export": "write the best trial's complete TrainConfig to a YAML file",
    "retrain": "train once, in full, from an exported config",
    "verify": "retrain the winner and the seed recipe on several seeds: does the search pay?",
}


def default_grace(base: TrainConfig) -> int:
    """ASHA's grace period: the first epoch after warmup (a trial is never ranked on warmup
    epochs, where every trial still sits near its start), and at least a tenth of the run.
    Seed recipe (50 epochs, warmup 5): 6; the demo (12 epochs, no warmup): 1."""
    return min(base.epochs, max(1, base.warmup_epochs + 1, base.epochs // 10))


@dataclass
class SearchSettings:
    """Everything one search needs, resolved and validated (paths absolute)."""
    space: str
    metric: str
    num_samples: int
    grace_period: int
    reduction_factor: int
    storage_path: str
    name: str
    max_failures: int
    keep_checkpoints: int
    seed: int
    base: TrainConfig
    mode: str = "max"
    max_concurrent: int | None = None
    time_budget_s: float | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    address: str | None = None
    sampler: str = "tpe"           # tuner.searcher.build_sampler: tpe or random
    share_prefix: bool = True      # trainable.train.prefix: trials start from a shared prefix's checkpoint
    resume: bool = False
    explicit: set = field(default_factory=set)  # flags the user gave (for messages and hooks)
    namespace: argparse.Namespace | None = None  # the parsed command line (tracking flags: tuner.tracking.hooks)

    @property
    def experiment_path(self) -> str:
        return os.path.join(self.storage_path, self.name)


def build_parser() -> argparse.ArgumentParser:
    from trainable.cli_config import add_config_arguments

    parser = argparse.ArgumentParser(
        prog="run_search.py",
        description="Search the staged recipe's hyperparameters with Ray Tune + Optuna TPE + ASHA.",
        epilog="subcommands: " + "; ".join(f"`run_search.py {k}`: {v}" for k, v in SUBCOMMANDS.items())
        + ". Every TrainConfig flag changes the base config the search starts from.",
        conflict_handler="resolve",  # our --seed / --resume replace TrainConfig's (see module doc)
        allow_abbrev=False,  # `--mode sideways` must not be read as an abbreviation of --model-type
    )
    add_config_arguments(parser)
    s = parser.add_argument_group("search")
    S = argparse.SUPPRESS
    s.add_argument("--space", default=S, metavar="NAME|FILE.yaml",
                   help=f"search space: a registered name or a YAML file (default {DEFAULTS['space']})")
    s.add_argument("--metric", default=S, choices=METRICS, help="metric to maximise (default macro_f1)")
    s.add_argument("--num-samples", type=int, default=S, metavar="N",
                   help=f"number of trials (default {DEFAULTS['num_samples']}; {DEMO_NUM_SAMPLES} with --demo)")
    s.add_argument("--max-concurrent", type=int, default=S, metavar="N",
                   help="trials running at once (default: as many as the resources fit)")
    s.add_argument("--time-budget", default=S, metavar="SECONDS",
                   help="stop the search after this long; accepts 90, 30m, 2h (default: no limit)")
    s.add_argument("--sampler", default=S, choices=("tpe", "random"),
                   help="Optuna sampler: tpe (default) or random, e.g. to compare them (seeded by --seed)")
    s.add_argument("--seed", type=int, default=S,
                   help="seeds the TPE sampler and every trial's training (default: TrainConfig seed, 42)")
    s.add_argument("--grace-period", type=int, default=S, metavar="EPOCHS",
                   help="ASHA: epochs every trial runs before it is first ranked (default: the first epoch at "
                        "which the space's trials have diverged (tuner.rungs), at least warmup epochs + 1 and "
                        "epochs/10)")
    s.add_argument("--share-prefix", action=argparse.BooleanOptionalAction, default=S,
                   help="a trial whose first k epochs equal an earlier trial's (same knobs, seed and schedule "
                        "so far) starts from that trial's epoch-k checkpoint instead of training them again "
                        "(default on)")
    s.add_argument("--reduction-factor", type=int, default=S, metavar="K",
                   help=f"ASHA: the top 1/K at each rung go on, the rest wait paused or stop "
                        f"(default {DEFAULTS['reduction_factor']})")
    s.add_argument("--resume", default=S, metavar="NAME",
                   help="continue the interrupted search NAME (under --storage-path) with its own settings")
    r = parser.add_argument_group("resources and storage")
    r.add_argument("--cpus-per-trial", type=float, default=S, metavar="N",
                   help="CPUs per trial (default: shared out by the detected hardware)")
    r.add_argument("--gpus-per-trial", type=float, default=S, metavar="N",
                   help="GPUs per trial, fractions allowed, e.g. 0.5 (default 1 on CUDA / MPS, 0 on CPU)")
    r.add_argument("--storage-path", default=S, metavar="DIR",
                   help="where experiments are written (default ./ray_results; shared storage on a cluster)")
    r.add_argument("--name", default=S, help="experiment name (default <space>-<timestamp>-<random suffix>)")
    r.add_argument("--max-failures", type=int, default=S, metavar="N",
                   help="restarts of a crashed trial from its last checkpoint (default 2)")
    r.add_argument("--keep-checkpoints", type=int, default=S, metavar="K",
                   help="checkpoints kept per trial: the K best plus the latest (default 2)")
    r.add_argument("--address", default=S, metavar="auto|ray://HOST:PORT|HOST:PORT",
                   help="run on an existing Ray cluster instead of starting a local one")
    add_search_arguments(parser)
    move_group_last(parser, "training configuration")  # the search's own flags before the ~70 TrainConfig ones
    return parser


def parse_settings(argv: list[str] | None) -> SearchSettings:
    """Parse and resolve the command line into SearchSettings; UserError on bad values.

    Data, the space and the experiment directory are checked later (tuner.prepare),
    still before Ray starts.
    """
    parser = build_parser()
    ns = parser.parse_args(argv)
    given = set(vars(ns))
    for flag in ("name", "resume"):
        if flag in given and not str(getattr(ns, flag)).strip():
            hint = "drop --name for a fresh default name" if flag == "name" else "name the search to continue"
            raise UserError(f"--{flag} '': the name is empty; {hint}")
    if "resume" in given:
        return _resume_settings(ns, given)
    opts = {**DEFAULTS, **{k: v for k, v in vars(ns).items() if k in DEFAULTS}}

    from trainable.cli_config import resolve_config

    base = resolve_config(ns)
    base = absolute_paths(base)
    seed = base.seed
    grace = opts["grace_period"] if opts["grace_period"] is not None else default_grace(base)
    num_samples = opts["num_samples"] if "num_samples" in given or not base.demo else DEMO_NUM_SAMPLES
    space = opts["space"]
    if space.endswith((".yaml", ".yml")):
        space = str(Path(space).expanduser().resolve())
    settings = SearchSettings(
        space=space, metric=opts["metric"], num_samples=num_samples, grace_period=grace,
        reduction_factor=opts["reduction_factor"], storage_path=str(Path(opts["storage_path"]).expanduser().resolve()),
        name=opts["name"] or default_name(space), max_failures=opts["max_failures"],
        keep_checkpoints=opts["keep_checkpoints"], seed=seed, base=base,
        max_concurrent=opts["max_concurrent"], time_budget_s=parse_duration(opts["time_budget"]),
        cpus_per_trial=opts["cpus_per_trial"], gpus_per_trial=opts["gpus_per_trial"],
        address=opts["address"], sampler=opts["sampler"], share_prefix=opts["share_prefix"],
        explicit=given, namespace=ns,
    )
    check_settings(settings)
    return settings


def _resume_settings(ns: argparse.Namespace, given: set) -> SearchSettings:
    """--resume NAME: everything but resources and storage comes from the experiment."""
    from tuner.experiment import read_meta

    ignored = sorted(given - RESUME_FLAGS - {"resume"})
    if ignored:
        flags = ", ".join("--" + k.replace("_", "-").replace("config-file", "config") for k in ignored)
        raise UserError(f"--resume continues a search with the settings it was started with; drop {flags}")
    storage = str(Path(getattr(ns, "storage_path", DEFAULTS["storage_path"])).expanduser().resolve())
    meta = read_meta(storage, ns.resume)
    settings = SearchSettings(
        space=meta["space"], metric=meta["metric"], mode=meta["mode"], num_samples=meta["num_samples"],
        grace_period=meta["grace_period"], reduction_factor=meta["reduction_factor"], storage_path=storage,
        name=ns.resume, max_failures=meta["max_failures"], keep_checkpoints=meta["keep_checkpoints"],
        seed=meta["seed"], base=TrainConfig.from_dict(meta["base_config"], source="experiment base config"),
        max_concurrent=meta.get("resources", {}).get("max_concurrent", meta.get("max_concurrent")),
        time_budget_s=meta.get("time_budget_s"),
        cpus_per_trial=getattr(ns, "cpus_per_trial", meta.get("cpus_per_trial")),
        gpus_per_trial=getattr(ns, "gpus_per_trial", meta.get("gpus_per_trial")),
        address=getattr(ns, "address", None), resume=True, explicit=given, namespace=ns,
        sampler=meta.get("sampler", "tpe"), share_prefix=meta.get("share_prefix", False),
    )
    check_settings(settings)
    return settings


def check_settings(s: SearchSettings) -> None:
    def bad(flag: str, value, why: str) -> None:
        raise UserError(f"{flag} {value}: {why}")

    if s.metric not in METRICS:
        bad("--metric", s.metric, f"must be one of {', '.join(METRICS)}")
    if s.num_samples < 1:
        bad("--num-samples", s.num_samples, "must be at least 1")
    if s.max_concurrent is not None and s.max_concurrent < 1:
        bad("--max-concurrent", s.max_concurrent, "must be at least 1")
    if not 1 <= s.grace_period <= s.base.epochs:
        bad("--grace-period", s.grace_period, f"must be between 1 and --epochs {s.base.epochs}")
    if s.reduction_factor < 2:
        bad("--reduction-factor", s.reduction_factor, "must be at least 2")
    if s.max_failures < 0:
        bad("--max-failures", s.max_failures, "must not be negative")
    if s.keep_checkpoints < 1:
        bad("--keep-checkpoints", s.keep_checkpoints, "must be at least 1")
    for flag_name, value in (("--cpus-per-trial", s.cpus_per_trial), ("--gpus-per-trial", s.gpus_per_trial)):
        if value is not None and value < 0:
            bad(flag_name, f"{value:g}", "must not be negative")
    if s.cpus_per_trial is not None and s.cpus_per_trial == 0:
        bad("--cpus-per-trial", 0, "a trial needs at least part of a CPU, e.g. 0.5")
    cpus = local_cpu_count()
    if s.address is None and s.cpus_per_trial is not None and s.cpus_per_trial > cpus:
        # a local Ray never has more CPUs than the OS gives this process (an attached cluster is checked there)
        bad("--cpus-per-trial", f"{s.cpus_per_trial:g}", f"this machine has only {cpus} CPUs; ask for at most {cpus}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,127}", s.name):
        bad("--name", s.name, "use letters, digits and . _ = + - (no slashes or spaces)")
    if s.address is not None and not (s.address == "auto" or re.fullmatch(r"(ray://)?[\w.-]+:\d+", s.address)):
        bad("--address", s.address, "use auto, ray://HOST:PORT or HOST:PORT")
    _check_storage(s.storage_path)


def _check_storage(storage: str) -> None:
    probe = Path(storage)
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--storage-path {storage}: {probe} is not a writable directory; choose another")


def local_cpu_count() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    return len(getaffinity(0)) if getaffinity else (os.cpu_count() or 1)


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Trials run in Ray's working directories: resolve every path the driver was given."""
    changes = {}
    for name in ("train_dir", "val_dir", "train_meta", "val_meta", "class_weights", "pretrained_path"):
        value = getattr(cfg, name)
        if value and not (name == "pretrained_path" and value == DEMO_WEIGHTS):
            changes[name] = str(Path(value).expanduser().resolve())
    return cfg.replace(**changes)


def default_name(space: str) -> str:
    stem = Path(space).stem if space.endswith((".yaml", ".yml")) else space
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "search"
    # the suffix keeps two searches started in the same second apart (they would share one directory)
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def parse_duration(text) -> float | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"--time-budget {text}: use a positive number of seconds, or e.g. 30m, 2h")
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * scale
