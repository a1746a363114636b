"""MLflow as a search hook (tuner.hooks): flags, preflight, parent run, trial callback, artifacts.

tuner.tracking re-exports (lazily) the two entry points tuner.cli / tuner.hooks look for,
`add_search_arguments` and `search_hooks`: every search logs to MLflow (default
sqlite:///<cwd>/mlflow.db; --mlflow-uri / $MLFLOW_TRACKING_URI; --no-mlflow turns it off).
"""

from __future__ import annotations

import argparse
import sys

from trainable._compat import optuna_study
from trainable.errors import UserError
from tuner import tracking
from tuner.hooks import ResumeFlagsOnly, SearchHooks

STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("MLflow tracking")
    hide = argparse.SUPPRESS  # given flags only: --resume accepts mlflow_* flags
    group.add_argument("--mlflow-uri", default=hide, metavar="URI",
                       help="tracking store: sqlite:///path.db or http://host:port "
                            "(default $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db)")
    group.add_argument("--mlflow-experiment", default=hide, metavar="NAME",
                       help="MLflow experiment (default croptune)")
    group.add_argument("--no-mlflow", action="store_true", default=hide, help="do not log to MLflow")


def search_hooks(settings) -> list[SearchHooks]:
    namespace = getattr(settings, "namespace", None)
    if getattr(namespace, "no_mlflow", False):
        return [ResumeFlagsOnly(["--no-mlflow"])]
    # not `... or "croptune"`: an empty --mlflow-experiment is refused in validate(), not replaced
    return [MlflowSearchHooks(getattr(namespace, "mlflow_uri", None),
                              getattr(namespace, "mlflow_experiment", "croptune"))]


class MlflowSearchHooks(SearchHooks):
    def __init__(self, uri: str | None = None, experiment: str = "croptune"):
        self.requested_uri, self.experiment = uri, experiment
        self.uri = self.client = self.experiment_id = self.parent = self.callback = None
        self._opening = None  # start(): the store being opened in a thread

    def validate(self, settings) -> None:
        if self.requested_uri is not None and not self.requested_uri.strip():
            raise UserError("--mlflow-uri is empty: give sqlite:///path/to/mlflow.db or http://host:port "
                            "(or leave the flag out for the default)")
        self.uri = tracking.resolve_tracking_uri(self.requested_uri)
        tracking.preflight(self.uri, requested=self.requested_uri)
        tracking.preflight_experiment(self.uri, self.experiment)  # a deleted one: before Ray starts

    def start(self, settings) -> None:
        """Open the store in a thread while the data loads and Ray starts: a new sqlite store
        creates its tables (~4 s of CPU on 2 cores), and the first trial used to wait for it."""
        from concurrent.futures import ThreadPoolExecutor

        self.uri = self.uri or tracking.resolve_tracking_uri(self.requested_uri)
        pool = ThreadPoolExecutor(1, thread_name_prefix="croptune-mlflow")
        self._opening = pool.submit(self._open_store, self.uri)
        pool.shutdown(wait=False)

    def _open_store(self, uri: str):
        client = tracking.client_for(uri)
        return client, tracking.ensure_experiment(client, self.experiment)

    def callbacks(self, context) -> list:
        from tuner.tracking_callback import MlflowTrialCallback

        settings = context.settings
        self.uri = self.uri or tracking.resolve_tracking_uri(self.requested_uri)
        opening, self._opening = self._opening, None
        # an error opening the store surfaces here, where it always did
        self.client, self.experiment_id = opening.result() if opening is not None else self._open_store(self.uri)
        self.parent = tracking.start_parent_run(
            self.client, self.experiment_id, settings.name, params=parent_params(context),
            tags={"experiment_path": context.experiment_path}, resume=bool(settings.resume))
        print(tracking.where_to_look(self.uri, self.experiment_id, self.parent), flush=True)
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
        tracking.finish_parent_run(self.client, self.parent, STATUS.get(outcome, "FAILED"))
        print(tracking.where_to_look(self.uri, self.experiment_id, self.parent), flush=True)

    def resume_flags(self) -> list[str]:
        # The store as resolved (absolute): the printed --resume command logs to the same
        # parent run from any directory, whatever --mlflow-uri / $MLFLOW_TRACKING_URI said.
        flags = ["--mlflow-uri", self.uri] if self.uri else []
        return flags + (["--mlflow-experiment", self.experiment] if self.experiment != "croptune" else [])

    def _log_artifacts(self, context) -> None:
        from tuner.tracking_artifacts import (
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
    from tuner.tracking_artifacts import class_names, saved_val_predictions

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
        "asha_grace_period": settings.grace_period, "asha_reduction_factor": settings.reduction_factor,
        "searcher": "OptunaSearch(TPE)", "max_concurrent": getattr(context.resources, "max_concurrent", None),
        "max_failures": settings.max_failures, "time_budget_s": settings.time_budget_s,
        "data_fingerprint": info.get("fingerprint"), "data_root": info.get("root"),
        "num_train": info.get("num_train"), "num_val": info.get("num_val"),
        "class_counts": info.get("class_counts"),
    }
    params.update({f"base.{key}": value for key, value in context.base_config.to_dict().items()})
    return params
