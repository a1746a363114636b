"""End-of-search artifacts: the trials table and plots on the parent run, learning curves and a
confusion matrix on the best trial's run.

    trials, histories = tables_from_results(result_grid, metric, mode)
    log_search_artifacts(client, parent_run_id, trials, histories, study, metric=..., mode=...)
    log_best_trial_artifacts(client, callback.run_id(best_trial_id), histories[best_trial_id],
                             confusion=confusion_matrix_array)        # confusion is optional
    labels, predictions, epoch = saved_val_predictions(result_grid, best_trial_id)  # or None:
    #   the val split's predictions the trial saved beside its latest checkpoint
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

STEP = "epoch"


def tables_from_results(results, metric: str = "macro_f1", mode: str = "max"
                        ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(one row per trial, {trial_id: per-epoch metrics}) from a Tune ResultGrid."""
    rows, histories = [], {}
    for result in results:
        last = result.metrics or {}
        trial_id = last.get("trial_id") or Path(str(result.path)).name
        history = result.metrics_dataframe
        if history is not None and len(history):
            histories[trial_id] = history
        column = history[metric] if history is not None and metric in history else pd.Series(dtype=float)
        rows.append({
            "trial_id": trial_id,
            "status": "error" if result.error else "ok",
            "epochs": last.get(STEP),
            f"last_{metric}": last.get(metric),
            f"best_{metric}": (column.max() if mode == "max" else column.min()) if len(column) else None,
            **{f"config/{k}": v for k, v in (result.config or {}).items()},
            "error": _one_line(result.error) if result.error else "",
        })
    return pd.DataFrame(rows), histories


def log_search_artifacts(client, parent_run_id: str, trials: pd.DataFrame,
                         histories: dict[str, pd.DataFrame], study=None, metric: str = "macro_f1",
                         mode: str = "max", best_trial_id: str | None = None) -> list[str]:
    """trials.csv, plots/metric_vs_epoch.png and (with an Optuna study)
    plots/optimization_history.png and plots/param_importances.png on the parent run.
    A plot that cannot be drawn (e.g. importances with < 2 finished trials) is listed in
    plots/skipped.txt instead. best_trial_id: the search's best (highlighted; default: the
    best value at any epoch). Returns the artifact paths logged."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "plots").mkdir()
        trials.to_csv(root / "trials.csv", index=False)
        _save(metric_vs_epoch(histories, metric, mode, best_trial_id), root / "plots" / "metric_vs_epoch.png")
        skipped = []
        if study is not None:
            for name, plot in (("optimization_history", _optuna_history),
                               ("param_importances", _optuna_importances)):
                try:
                    plot(study, root / "plots" / f"{name}.png")
                except Exception as exc:  # a missing plot must not fail the search
                    skipped.append(f"{name}: {_one_line(exc)}")
        if skipped:
            (root / "plots" / "skipped.txt").write_text("\n".join(skipped) + "\n")
        client.log_artifacts(parent_run_id, str(root))
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def log_best_trial_artifacts(client, run_id: str, history: pd.DataFrame, confusion=None,
                             class_names: list[str] | None = None, confusion_title: str | None = None
                             ) -> list[str]:
    """plots/learning_curves.png (+ the confusion matrix when given) on the best trial's run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "learning_curves.png"
        _save(learning_curves(history), path)
        client.log_artifact(run_id, str(path), artifact_path="plots")
    logged = ["plots/learning_curves.png"]
    if confusion is not None:
        logged += log_confusion_matrix(client, run_id, confusion, class_names, confusion_title)
    return logged


def log_confusion_matrix(client, run_id: str, matrix, class_names: list[str] | None = None,
                         title: str | None = None) -> list[str]:
    """plots/confusion_matrix.png (rows normalised to recall) and confusion_matrix.csv (counts)."""
    matrix = np.asarray(matrix)
    names = class_names or [str(i) for i in range(matrix.shape[0])]
    with tempfile.TemporaryDirectory() as tmp:
        png, csv = Path(tmp) / "confusion_matrix.png", Path(tmp) / "confusion_matrix.csv"
        _save(confusion_figure(matrix, names, title), png)
        pd.DataFrame(matrix, index=names, columns=names).to_csv(csv)
        client.log_artifact(run_id, str(png), artifact_path="plots")
        client.log_artifact(run_id, str(csv))
    return ["plots/confusion_matrix.png", "confusion_matrix.csv"]


def saved_val_predictions(results, trial_id: str) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(labels, predictions, epoch) of the val split saved beside a trial's latest checkpoint
    (trainable.tune_entry.PREDICTIONS_FILE), or None when the trial has none."""
    from trainable.tune_entry import PREDICTIONS_FILE

    for result in results:
        metrics = result.metrics or {}
        if metrics.get("trial_id") != trial_id:
            continue
        if result.checkpoint is None:
            return None
        with result.checkpoint.as_directory() as directory:
            path = Path(directory) / PREDICTIONS_FILE
            if not path.is_file():
                return None
            with np.load(path) as saved:
                return saved["labels"], saved["predictions"], int(metrics.get(STEP, 0))
    return None


def class_names(num_classes: int) -> list[str]:
    """`id crop: disease` (+ `(serious)`) for the 61 classes; plain ids for any other count."""
    from trainable.data.taxonomy import CLASSES

    if num_classes != len(CLASSES):
        return [str(i) for i in range(num_classes)]
    return [f"{c.id} {c.crop}: {c.disease}" + (" (serious)" if c.severity == "serious" else "")
            for c in CLASSES]


# ---------------------------------------------------------------------- figures
def metric_vs_epoch(histories: dict[str, pd.DataFrame], metric: str, mode: str = "max",
                    best_trial_id: str | None = None) -> Figure:
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    curves = {tid: h for tid, h in histories.items() if metric in h and STEP in h}
    if curves:
        best_of = (lambda h: h[metric].max()) if mode == "max" else (lambda h: -h[metric].min())
        best = best_trial_id if best_trial_id in curves else max(curves, key=lambda t: best_of(curves[t]))
        for trial_id, history in curves.items():
            ax.plot(history[STEP], history[metric], marker=".", alpha=0.9 if trial_id == best else 0.5,
                    linewidth=2.5 if trial_id == best else 1.0,
                    label=f"{trial_id} (best)" if trial_id == best else trial_id)
        if len(curves) <= 20:
            ax.legend(fontsize="small")
    ax.set(xlabel=STEP, ylabel=metric, title=f"{metric} per epoch, all trials ({len(curves)})")
    ax.grid(alpha=0.3)
    return fig


def learning_curves(history: pd.DataFrame) -> Figure:
    panels = [("loss", ("train_loss", "val_loss")), ("accuracy (%)", ("train_acc", "val_acc", "tail_acc")),
              ("macro-F1", ("macro_f1",))]
    panels = [(label, [c for c in cols if c in history]) for label, cols in panels]
    panels = [(label, cols) for label, cols in panels if cols] or [("value", [])]
    fig = Figure(figsize=(5 * len(panels), 4), layout="constrained")
    for ax, (label, columns) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels, strict=True):
        for column in columns:
            ax.plot(history[STEP], history[column], marker=".", label=column)
        ax.set(xlabel=STEP, ylabel=label, title=label)
        ax.grid(alpha=0.3)
        if columns:
            ax.legend(fontsize="small")
    return fig


def confusion_figure(matrix: np.ndarray, names: list[str], title: str | None = None) -> Figure:
    totals = matrix.sum(axis=1, keepdims=True)
    recall = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    size = max(6.0, 0.16 * len(names) + 3)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=90, fontsize=6)
    ax.set_yticks(ticks, names, fontsize=6)
    heading = f"{title}: confusion matrix" if title else "Confusion matrix"
    ax.set(xlabel="predicted", ylabel="true",
           title=f"{heading} (rows normalised; {int(matrix.sum())} samples)")
    return fig


def _optuna_history(study, path: Path) -> None:
    from optuna.visualization.matplotlib import plot_optimization_history

    _optuna_plot(plot_optimization_history, study, path)


def _optuna_importances(study, path: Path) -> None:
    from optuna.visualization.matplotlib import plot_param_importances

    _optuna_plot(plot_param_importances, study, path)


def _optuna_plot(plot, study, path: Path) -> None:
    # Optuna draws with pyplot: make sure it is the non-interactive backend (no display).
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # rc_context: Optuna switches pyplot to the ggplot style; keep that out of our own figures.
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore")  # ExperimentalWarning
        ax = plot(study)
        fig = ax.figure if hasattr(ax, "figure") else np.ravel(ax)[0].figure
        fig.set_size_inches(8, 5)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=110)


def _one_line(value) -> str:
    lines = [line.strip() for line in str(value).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(value).__name__)[:300]
