"""Build and run the search: OptunaSearch (TPE) + ASHA over the Tune function trainable.

    settings = tuner.cli.parse_settings(argv)      # no Ray yet
    exit_code = run_search(settings)              # validate -> decode data once -> Ray -> Tuner

The Tuner is standard: `tune.Tuner.restore(experiment_path, wrapped_trainable(...))` reads
it back from any process. A trial's config holds only the searcher's overrides; the base
TrainConfig travels with the trainable (tune.with_parameters) and is recorded in the
experiment's croptune_search.json.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import sys
import time
from types import SimpleNamespace

from trainable._compat import live_trials, restored_search, restored_tuner_config
from trainable.config import TrainConfig, field_names
from trainable.errors import UserError
from tuner.experiment import (
    SUMMARY_FILE,
    claim_new_experiment,
    experiment_dir,
    load_study,
    lost_checkpoints,
    record_session,
    release_claim,
    write_json_atomic,
    write_meta,
)
from tuner.hooks import SearchContext
from tuner.prepare import prepare_search, seed_point
from tuner.resources import probe_address
from tuner.summary import build_summary, format_report, trial_records
from tuner.tracking.hooks import search_hooks

TIME_ATTR = "epoch"
INTERRUPTED_EXIT = 130
NO_RESULT_EXIT = 1  # the search ran but no trial reported a score: nothing to export
PREFIX_DIR = "prefixes"  # trainable.train.prefix's store, in the experiment directory; removed when the search finishes
# Tune gives every trial actor a runtime_env of its own (ray.tune.execution.class_cache), so the idle
# workers Ray prestarts, one per CPU, never run a trial and only slow the start; for a Ray we start.
LOCAL_RAY_CONFIG = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}
# Tune's TensorBoard logger imports tensorboardX, and with it torch, right before the first trial:
# imported in a thread while ray.init waits, it is off the first trial's path.
TUNE_DRIVER_IMPORTS = ("tensorboardX",)


def main(argv: list[str] | None = None) -> int:
    from tuner.cli import parse_settings

    return run_search(parse_settings(argv))


def run_search(settings, hooks=None) -> int:
    """Run (or, with settings.resume, continue) a search; returns the process exit code.

    hooks: what rides along (tuner.hooks); default MLflow tracking, or none with --no-mlflow."""
    hooks = search_hooks(settings) if hooks is None else list(hooks)
    prepare_search(settings, hooks)  # UserError -> exit 2, nothing written
    if settings.resume:
        check_checkpoints(settings)
    else:
        place_first_rung(settings)
    started = time.time()
    from trainable.data.dataset import load_data

    data = load_data(settings.base, progress=True)  # decoded once, on the driver (a bad image: UserError)
    claimed = None
    if settings.address is None:
        # nothing is left that a user's input can fail (attaching to --address can: no overlap
        # there, so a wrong address leaves no tracking store behind)
        claimed = _claim(settings)
        for hook in hooks:
            hook.start(settings)
    import ray

    # while ray.init waits for Ray's processes; in the order the driver needs them
    hook_imports = tuple(name for hook in hooks for name in hook.driver_imports)
    _import_in_background(hook_imports + TUNE_DRIVER_IMPORTS)
    try:
        owns_ray = connect(settings)
    except BaseException:
        if claimed is not None:
            release_claim(claimed)
        raise
    context = SearchContext(settings=settings, experiment_path=str(experiment_dir(settings.storage_path, settings.name)),
                            base_config=settings.base, data_info=data_info(data))
    outcome = "failed"
    try:
        from tuner.resources import hardware_from_ray, plan_resources

        where = settings.address or "this machine"
        context.resources = plan_resources(
            hardware_from_ray(ray.cluster_resources(), where), cpus_per_trial=settings.cpus_per_trial,
            gpus_per_trial=settings.gpus_per_trial, max_concurrent=settings.max_concurrent,
            device=settings.base.device, num_samples=settings.num_samples)
        print(context.resources.describe(), flush=True)
        if settings.address is not None:  # attached: the last check (resources) has passed
            claimed = _claim(settings)
        tuner = build_tuner(settings, data, context, hooks)
        with _sigterm_as_sigint():
            try:
                results = tuner.fit()
            except KeyboardInterrupt:  # a second Ctrl-C while Tune was saving its state
                outcome = "interrupted"
                raise
        context.results = results
        context.study = _final_study(context)
        records = trial_records(_trials(results, context.experiment_path), settings.base, settings.metric)
        interrupted = _interrupted(settings, records, started, context.experiment_path)
        outcome = "interrupted" if interrupted else "finished"
    finally:
        owns_dir = bool(settings.resume) or claimed is not None  # a lost claim: the dir is another search's
        wall = (record_session(settings.storage_path, settings.name, time.time() - started, outcome)
                if owns_dir else time.time() - started)
        try:
            if outcome == "finished":
                shutil.rmtree(prefix_dir(settings), ignore_errors=True)  # nothing resumes a finished search
                context.summary = build_summary(settings, records, wall)
                write_json_atomic(experiment_dir(settings.storage_path, settings.name) / SUMMARY_FILE,
                                  context.summary)
            for hook in hooks:
                hook.finished(context, outcome)
        finally:
            if owns_ray:
                ray.shutdown()
            if outcome == "failed" and claimed is not None:
                release_claim(claimed)
    if outcome == "interrupted":
        print(f"\nSearch {settings.name} interrupted; its state is saved. Continue it with:\n"
              f"  {resume_command(settings, hooks)}", flush=True)
        return INTERRUPTED_EXIT
    budget_spent = settings.time_budget_s is not None and time.time() - started >= settings.time_budget_s * 0.95
    print("\n" + format_report(context.summary, records, settings.base,
                               time_budget_s=settings.time_budget_s if budget_spent else None), flush=True)
    if context.summary["best_trial_id"] is None:
        return NO_RESULT_EXIT
    print(f"Export the best config: {export_command(settings)}", flush=True)
    return 0


def check_checkpoints(settings) -> None:
    """--resume: every trial to continue still has its checkpoint (else Tune fails it after Ray started)."""
    lost = lost_checkpoints(settings.storage_path, settings.name)
    if lost:
        raise UserError(f"--resume {settings.name}: the checkpoints of trial(s) {', '.join(lost)} are gone from "
                        f"{experiment_dir(settings.storage_path, settings.name)} (trial directories deleted?); "
                        f"restore them, or start a new search")


def export_command(settings) -> str:
    return shlex.join(["python", "run_search.py", "export", "--experiment", settings.name,
                       "--storage-path", settings.storage_path, "--out", "best.yaml"])


def _claim(settings):
    """The new search's experiment directory, created now (None for --resume: it continues its own)."""
    return None if settings.resume else claim_new_experiment(settings.storage_path, settings.name)


def _import_in_background(modules) -> None:
    """Import what the driver will import anyway, in a daemon thread; a failure is left for the
    real import to meet (and report)."""
    if os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS") == "1":
        modules = [name for name in modules if name not in TUNE_DRIVER_IMPORTS]
    import importlib
    import importlib.util
    import threading

    def run():
        for name in modules:
            try:
                if importlib.util.find_spec(name) is not None:
                    importlib.import_module(name)
            except Exception:  # noqa: S112 - imported again where it is used, which reports it
                continue

    threading.Thread(target=run, name="croptune-preimport", daemon=True).start()


def resume_command(settings, hooks) -> str:
    """The exact command that continues this search (hooks add what they need, e.g. the MLflow store)."""
    command = ["python", "run_search.py", "--resume", settings.name, "--storage-path", settings.storage_path]
    for hook in hooks:
        command += list(hook.resume_flags())
    return shlex.join(command)


def connect(settings) -> bool:
    """Attach to --address or start a local Ray; True when this call started Ray (and must stop it)."""
    import ray

    if settings.address:
        probe_address(settings.address)  # also when Ray is up: a wrong address is wrong either way
    if ray.is_initialized():
        return False
    # Trials run in Ray worker processes: pass croptune's own settings (cache dir, test hooks).
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("CROPTUNE_")}
    runtime_env = {"env_vars": env_vars} if env_vars else None
    if settings.address:
        try:
            ray.init(address=settings.address, runtime_env=runtime_env)
        except Exception as exc:  # ConnectionError, TimeoutError, RuntimeError depending on the form
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            # Ray 2.60 sends its auth token to an explicit address only when asked to.
            auth = ("; if the cluster uses token authentication (Ray's default), set RAY_AUTH_MODE=token "
                    "(token from ~/.ray/auth_token or RAY_AUTH_TOKEN)"
                    if settings.address != "auto" and not os.environ.get("RAY_AUTH_MODE") else "")
            raise UserError(f"--address {settings.address}: cannot attach to a Ray cluster ({reason}); "
                            f"start one with `ray start --head` or fix the address{auth}") from None
        return True
    from tuner.resources import MPS_RESOURCE, local_mps_available

    # Ray finds CUDA GPUs itself; an Apple GPU becomes the custom `mps` resource (torch is
    # imported for that check on macOS only: the driver needs no torch otherwise).
    resources = {MPS_RESOURCE: 1} if sys.platform == "darwin" and local_mps_available() else None
    # address="local": a new local instance even when `ray start` left a cluster address on
    # this machine (plain ray.init() would attach to it); --address is the way to attach.
    ray.init(address="local", resources=resources, runtime_env=runtime_env, _system_config=LOCAL_RAY_CONFIG)
    return True


def place_first_rung(settings) -> None:
    """The default grace period: where the space's trials have diverged (tuner.rungs), not before warmup ends."""
    if "grace_period" in settings.explicit:
        return
    from tuner.cli import default_grace
    from tuner.rungs import TIE_LIMIT, first_ranking_epoch

    diverged = first_ranking_epoch(settings.space, settings.base, settings.num_samples)
    floor = default_grace(settings.base)
    settings.grace_period = max(floor, diverged)
    why = (f"before it more than {TIE_LIMIT:.0%} of this space's trials compute the same epochs as another, "
           f"so a rung could not rank them" if diverged > floor else "the first epoch after warmup")
    print(f"First rung at epoch {settings.grace_period} of {settings.base.epochs}: {why} "
          f"(--grace-period N to choose)", flush=True)


def prefix_dir(settings) -> str:
    return str(experiment_dir(settings.storage_path, settings.name) / PREFIX_DIR)


def wrapped_trainable(data, base: TrainConfig, per_trial: dict, settings=None):
    """The trainable exactly as the search runs it; pass the same to Tuner.restore.

    With settings.share_prefix, trials share their first epochs up to the first rung (trainable.train.prefix)."""
    from ray import tune

    from trainable.tune_entry import train_trial

    prefix = None
    if settings is not None and settings.share_prefix:
        prefix = {"dir": prefix_dir(settings), "epochs": min(settings.grace_period, base.epochs - 1)}
    return tune.with_resources(tune.with_parameters(train_trial, data=data, base=base.to_dict(), prefix=prefix),
                               per_trial)


def build_searcher(settings):
    from tuner.searcher import BoundSpace, PruningOptunaSearch, build_sampler

    point = seed_point(settings.space, settings.base)
    return PruningOptunaSearch(
        space=BoundSpace(settings.space, settings.base), metric=settings.metric, mode=settings.mode,
        points_to_evaluate=[point] if point else None,
        sampler=build_sampler(settings.sampler, settings.seed, settings.num_samples, settings.space),
        time_attr=TIME_ATTR, max_epochs=settings.base.epochs, config_keys=field_names())


def build_tuner(settings, data, context: SearchContext, hooks):
    from ray import tune

    from tuner.scheduler import PromotingASHA, RungLimiter

    trainable = wrapped_trainable(data, settings.base, context.resources.per_trial, settings)
    callbacks = [cb for hook in hooks for cb in hook.callbacks(context)]
    path = context.experiment_path
    if settings.resume:
        print(f"Resuming {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
        tune_config = restored_tuner_config(tuner, callbacks)  # hooks give fresh callbacks
        tune_config.search_alg = restored_search(tune_config.search_alg, settings.storage_path, settings.name)
        return tuner
    searcher = build_searcher(settings)
    context.searcher = searcher
    concurrent = context.resources.max_concurrent
    scheduler = PromotingASHA(time_attr=TIME_ATTR, metric=settings.metric, mode=settings.mode,
                              max_t=settings.base.epochs, grace_period=settings.grace_period,
                              reduction_factor=settings.reduction_factor, num_samples=settings.num_samples,
                              max_concurrent=concurrent)
    tune_config = tune.TuneConfig(
        metric=settings.metric, mode=settings.mode, search_alg=RungLimiter(searcher, concurrent),
        scheduler=scheduler, num_samples=settings.num_samples, time_budget_s=settings.time_budget_s,
        # The next trial runs in a finished trial's worker: no second import of torch + timm
        # and fetch of the dataset (seconds per trial); fit() seeds everything it uses.
        reuse_actors=True)
    run_config = tune.RunConfig(
        name=settings.name, storage_path=settings.storage_path, callbacks=callbacks or None,
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=settings.keep_checkpoints,
                                                checkpoint_score_attribute=settings.metric,
                                                checkpoint_score_order=settings.mode))
    plan = context.resources
    write_meta(settings, extra={"data": context.data_info,
                                "sampler": settings.sampler, "share_prefix": settings.share_prefix,
                                "resources": {"per_trial": plan.per_trial, "max_concurrent": plan.max_concurrent,
                                              "accelerator": plan.accelerator}})
    return tune.Tuner(trainable, param_space={}, tune_config=tune_config, run_config=run_config)


def data_info(data) -> dict:
    counts = getattr(data, "class_counts", None)
    return {
        "fingerprint": getattr(data, "fingerprint", None),
        "root": getattr(data, "root", None),
        "num_train": int(len(data.train.labels)) if hasattr(data, "train") else None,
        "num_val": int(len(data.val.labels)) if hasattr(data, "val") else None,
        "class_counts": [int(c) for c in counts] if counts is not None else None,
    }


def _trials(results, experiment_path: str):
    return live_trials(results, experiment_path)


def _final_study(context: SearchContext):
    """The study as Tune saved it after the last trial (also right on --resume and ray://)."""
    study = load_study(context.experiment_path)
    if study is None and context.searcher is not None:
        study = context.searcher.study
    if context.searcher is None and study is not None:  # --resume: hooks look for searcher.study
        context.searcher = SimpleNamespace(study=study)
    return study


def _interrupted(settings, records, started: float, experiment_path: str) -> bool:
    if any(r.unfinished for r in records):
        return True
    budget_spent = settings.time_budget_s is not None and time.time() - started >= settings.time_budget_s * 0.95
    if budget_spent:
        return False
    return len(records) < settings.num_samples or _unfinished_in_saved_state(experiment_path)


def _unfinished_in_saved_state(experiment_path: str) -> bool:
    """Tune's last saved state has a trial still running: the search was stopped (Ctrl-C, SIGTERM)
    mid-trial. After such a stop the live Trial objects read TERMINATED, so a stop during the last
    trials would otherwise pass for a finished search whose running trials "stopped early"."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(experiment_path).trials
    except Exception:  # no readable state: the live records are all there is
        return False
    return any(str(trial.status) not in ("TERMINATED", "ERROR") for trial in trials)


@contextlib.contextmanager
def _sigterm_as_sigint():
    """Tune checkpoints and stops cleanly on SIGINT; make SIGTERM (kill, schedulers) do the same."""
    if sys.platform == "win32":
        yield
        return
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
