"""MLflow as the search's hooks (tuner.hooks.SearchHooks): the tracking flags, their checks, the
parent run, the per-trial callback and the end-of-search artifacts.

Every search logs to MLflow (default sqlite:///<cwd>/mlflow.db; --mlflow-uri or
$MLFLOW_TRACKING_URI to choose; --no-mlflow turns it off). The URI is resolved once, when the
hook is built, and everything after it (preflight, the store, the trial callback, the printed
--resume command) uses that absolute URI.
"""

from __future__ import annotations

import argparse
import sys

from trainable._compat import optuna_study
from trainable.errors import UserError
from tuner.hooks import ResumeFlagsOnly, SearchHooks
from tuner.tracking import runs, store
from tuner.tracking.ui import where_to_look

STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
DEFAULT_EXPERIMENT = "croptune"


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """--mlflow-uri, --mlflow-experiment, --no-mlflow (dests mlflow_uri, mlflow_experiment, no_mlflow)."""
    group = parser.add_argument_group("MLflow tracking")
    hide = argparse.SUPPRESS  # given flags only: --resume accepts mlflow_* flags
    group.add_argument("--mlflow-uri", default=hide, metavar="URI",
                       help="tracking store: sqlite:///path.db or http://host:port "
                            "(default $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db)")
    group.add_argument("--mlflow-experiment", default=hide, metavar="NAME",
                       help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    group.add_argument("--no-mlflow", action="store_true", default=hide, help="do not log to MLflow")


def search_hooks(settings) -> list[SearchHooks]:
    """The search's hooks for settings.namespace: MLflow tracking, or with --no-mlflow only the flag
    the printed --resume command must carry (a search run untracked resumes untracked)."""
    namespace = getattr(settings, "namespace", None)
    if getattr(namespace, "no_mlflow", False):
        return [ResumeFlagsOnly(["--no-mlflow"])]
    # not `... or "croptune"`: an empty --mlflow-experiment is refused in validate(), not replaced
    return [MlflowSearchHooks(getattr(namespace, "mlflow_uri", None),
                              getattr(namespace, "mlflow_experiment", DEFAULT_EXPERIMENT))]


def checked_target(namespace) -> tuple[str, str] | None:
    """(absolute tracking URI, experiment) from the tracking flags, checked as a search checks them
    (blank flags, a bad $MLFLOW_TRACKING_URI named, a deleted experiment); None with --no-mlflow."""
    if getattr(namespace, "no_mlflow", False):
        return None
    hooks = MlflowSearchHooks(getattr(namespace, "mlflow_uri", None),
                              getattr(namespace, "mlflow_experiment", DEFAULT_EXPERIMENT))
    hooks.validate(None)
    return hooks.uri, hooks.experiment


class MlflowSearchHooks(SearchHooks):
    """uri: the --mlflow-uri given (None: $MLFLOW_TRACKING_URI, else the default), resolved here, once."""

    driver_imports = ("mlflow",)  # callbacks() imports MLflow's client, which takes seconds

    def __init__(self, uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT):
        self.requested_uri, self.experiment = uri, experiment
        blank = uri is not None and not uri.strip()  # refused in validate(), with its flag named
        self.uri = None if blank else store.resolve_tracking_uri(uri)
        self.client = self.experiment_id = self.parent = self.callback = None
        self._opening = None  # start(): the store being opened in a thread

    def validate(self, settings) -> None:
        if self.uri is None:
            raise UserError("--mlflow-uri is empty: give sqlite:///path/to/mlflow.db or http://host:port "
                            "(or leave the flag out for the default)")
        store.preflight(self.uri, requested=self.requested_uri)
        store.preflight_experiment(self.uri, self.experiment)  # a deleted one: before Ray starts

    def start(self, settings) -> None:
        """Open the store in a thread while the data loads and Ray starts: a new sqlite store
        creates its tables (seconds of CPU), which the first trial would otherwise wait for."""
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1, thread_name_prefix="croptune-mlflow")
        self._opening = pool.submit(store.open_experiment, self.uri, self.experiment)
        pool.shutdown(wait=False)

    def callbacks(self, context) -> list:
        from tuner.tracking.callback import MlflowTrialCallback

        settings = context.settings
        opening, self._opening = self._opening, None
        # an error opening the store (e.g. a deleted experiment) surfaces here, on the driver's thread
        self.client, self.experiment_id = (opening.result() if opening is not None
                                           else store.open_experiment(self.uri, self.experiment))
        self.parent = runs.start_parent_run(
            self.client, self.experiment_id, settings.name, params=parent_params(context),
            tags={"experiment_path": context.experiment_path}, resume=bool(settings.resume))
        print(where_to_look(self.uri, self.experiment_id, self.parent), flush=True)
        self.callback = MlflowTrialCallback(self.uri, self.experiment_id, self.parent,
                                            context.base_config.to_dict())
        return [self.callback]

    def finished(self, context, outcome: str) -> None:
        if self.parent is None:
            return
        try:
            if context.results is not None:
                self._log_artifacts(context)
        except Exception as exc:  # the search's own result must not be lost to a plot
            print(f"warning: MLflow artifacts not logged ({type(exc).__name__}: {exc})", file=sys.stderr)
        runs.finish_parent_run(self.client, self.parent, STATUS.get(outcome, "FAILED"))
        print(where_to_look(self.uri, self.experiment_id, self.parent), flush=True)

    def resume_flags(self) -> list[str]:
        # The store as resolved (absolute): the printed --resume command logs to the same
        # parent run from any directory, whatever --mlflow-uri / $MLFLOW_TRACKING_URI said.
        flags = ["--mlflow-uri", self.uri] if self.uri else []
        return flags + (["--mlflow-experiment", self.experiment] if self.experiment != DEFAULT_EXPERIMENT else [])

    def _log_artifacts(self, context) -> None:
        from tuner.tracking.artifacts import (
            log_best_trial_artifacts,
            log_search_artifacts,
            tables_from_results,
        )

        settings = context.settings
        trials, histories = tables_from_results(context.results, settings.metric, settings.mode)
        study = getattr(context.searcher, "study", None) or optuna_study(context.searcher)
        best = (context.summary or {}).get("best_trial_id")
        log_search_artifacts(self.client, self.parent, trials, histories, study,
                             metric=settings.metric, mode=settings.mode, best_trial_id=best)
        run_id = self.callback.run_id(best) if best else None
        if run_id and best in histories:
            matrix, title, names = best_confusion(context, best)
            log_best_trial_artifacts(self.client, run_id, histories[best], confusion=matrix,
                                     class_names=names, confusion_title=title)
            self.client.set_tag(self.parent, "best_run_id", run_id)


def best_confusion(context, trial_id: str):
    """(matrix, title, class names) from the val predictions saved beside the best trial's
    latest checkpoint (the epoch its final score comes from); (None, None, None) without them."""
    from trainable.train.metrics import confusion
    from tuner.tracking.artifacts import class_names, saved_val_predictions

    saved = saved_val_predictions(context.results, trial_id)
    if saved is None:
        print(f"note: trial {trial_id} saved no val predictions; no confusion matrix", file=sys.stderr)
        return None, None, None
    labels, predictions, epoch = saved
    counts = (context.data_info or {}).get("class_counts")
    num_classes = len(counts) if counts else int(max(labels.max(initial=0), predictions.max(initial=0))) + 1
    return (confusion(labels, predictions, num_classes=num_classes), f"trial {trial_id}, epoch {epoch}",
            class_names(num_classes))


def parent_params(context) -> dict:
    settings, info = context.settings, context.data_info or {}
    params = {
        "space": settings.space, "metric": settings.metric, "mode": settings.mode,
        "num_samples": settings.num_samples, "seed": settings.seed,
        "scheduler": "ASHA", "asha_time_attr": "epoch", "asha_max_t": context.base_config.epochs,
        "asha_grace_period": settings.grace_period, "share_prefix": settings.share_prefix, "asha_reduction_factor": settings.reduction_factor,
        "searcher": f"OptunaSearch({'TPE' if settings.sampler == 'tpe' else 'random'})", "max_concurrent": getattr(context.resources, "max_concurrent", None),
        "max_failures": settings.max_failures, "time_budget_s": settings.time_budget_s,
        "data_fingerprint": info.get("fingerprint"), "data_root": info.get("root"),
        "num_train": info.get("num_train"), "num_val": info.get("num_val"),
        "class_counts": info.get("class_counts"),
    }
    params.update({f"base.{key}": value for key, value in context.base_config.to_dict().items()})
    return params
