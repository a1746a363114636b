"""The end-of-search report: printed, and written as search_summary.json in the experiment dir.

A trial counts as
- completed:      it reported its last epoch (cfg.epochs);
- stopped early:  it ended without an error before its last epoch (ASHA, or the time budget);
- failed:         it ended with an error (after its --max-failures restarts); "diverged" failures
                  (loss became NaN/inf, see trainable.tune_entry) are counted among them and named.
The best trial is the best final score among completed trials, as in Optuna (pruned trials
have no final score); only when no trial completed is it the best last score of any trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainable.config import TrainConfig

SUMMARY_KEYS = ("experiment", "storage_path", "space", "metric", "mode", "best_trial_id", "best_value",
                "best_config", "num_trials", "num_stopped_early", "num_failed", "epochs_consumed", "wall_time_s")


@dataclass
class TrialRecord:
    trial_id: str
    status: str            # Tune's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    overrides: dict        # the trial's config: what the searcher set on top of the base
    epochs_done: int       # last reported epoch (0 if none)
    epochs_planned: int
    value: float | None    # last reported value of the metric
    error: str | None      # one line, for failed trials

    @property
    def failed(self) -> bool:
        return self.status == "ERROR"

    @property
    def diverged(self) -> bool:
        return self.failed and bool(self.error) and "diverged" in self.error

    @property
    def completed(self) -> bool:
        return self.status == "TERMINATED" and self.epochs_done >= self.epochs_planned

    @property
    def stopped_early(self) -> bool:
        return self.status == "TERMINATED" and self.epochs_done < self.epochs_planned

    @property
    def unfinished(self) -> bool:
        return self.status not in ("TERMINATED", "ERROR")


def trial_records(trials, base: TrainConfig, metric: str) -> list[TrialRecord]:
    """Records from Tune Trial objects (ResultGrid's, or ray.tune.ExperimentAnalysis(path).trials)."""
    records = []
    for trial in trials:
        last = trial.last_result or {}
        overrides = dict(trial.config or {})
        planned = int(overrides.get("epochs", base.epochs))
        value = last.get(metric)
        records.append(TrialRecord(
            trial_id=trial.trial_id, status=str(trial.status), overrides=overrides,
            epochs_done=int(last.get("epoch", 0) or 0), epochs_planned=planned,
            value=float(value) if value is not None else None,
            error=_error_line(trial) if trial.status == "ERROR" else None,
        ))
    return records


def _error_line(trial) -> str:
    path = getattr(trial, "error_file", None)
    if not path or not Path(path).is_file():
        return "error (no error file)"
    lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if "diverged:" in line:
            return line[line.index("diverged:"):]
    tail = [line for line in lines if not line.startswith(("Failure #", "File ", "^", "Traceback"))]
    return tail[-1][:300] if tail else "error"


def best_record(records: list[TrialRecord], mode: str = "max") -> TrialRecord | None:
    scored = [r for r in records if not r.failed and r.value is not None]
    pool = [r for r in scored if r.completed] or scored
    if not pool:
        return None
    pick = max if mode == "max" else min
    return pick(pool, key=lambda r: r.value)


def build_summary(settings, records: list[TrialRecord], wall_time_s: float) -> dict:
    best = best_record(records, settings.mode)
    summary = {
        "experiment": settings.name,
        "storage_path": settings.storage_path,
        "space": settings.space,
        "metric": settings.metric,
        "mode": settings.mode,
        "best_trial_id": best.trial_id if best else None,
        "best_value": best.value if best else None,
        "best_config": settings.base.replace(**best.overrides).to_dict() if best else None,
        "num_trials": len(records),
        "num_stopped_early": sum(r.stopped_early for r in records),
        "num_failed": sum(r.failed for r in records),
        "epochs_consumed": sum(r.epochs_done for r in records),
        "wall_time_s": round(float(wall_time_s), 3),
    }
    assert tuple(summary) == SUMMARY_KEYS
    return summary


def format_report(summary: dict, records: list[TrialRecord], base: TrainConfig) -> str:
    completed = sum(r.completed for r in records)
    diverged = sum(r.diverged for r in records)
    failed = f"{summary['num_failed']} failed" + (f" ({diverged} diverged)" if diverged else "")
    lines = [
        f"Search {summary['experiment']} (space {summary['space']}): {summary['num_trials']} trials: "
        f"{completed} completed, {summary['num_stopped_early']} stopped early, {failed}; "
        f"{summary['epochs_consumed']} epochs in total; wall time {format_seconds(summary['wall_time_s'])}.",
    ]
    best = next((r for r in records if r.trial_id == summary["best_trial_id"]), None)
    if best is None:
        lines.append("No trial reported a score: nothing to export (see the trial errors above).")
    else:
        how = "" if best.completed else f" (after {best.epochs_done}/{best.epochs_planned} epochs: no trial completed)"
        lines.append(f"Best trial {best.trial_id}: {summary['metric']} = {summary['best_value']:.4f}{how}")
        changed = {k: v for k, v in best.overrides.items() if getattr(base, k, None) != v}
        shown = changed or best.overrides
        lines.append("  overrides: " + (" ".join(f"{k}={_fmt(v)}" for k, v in sorted(shown.items()))
                                         or "none (the base config)")
                     + ("" if changed or not best.overrides else "  (= the base config)"))
    for r in records:
        if r.failed:
            lines.append(f"  failed trial {r.trial_id}: {r.error}")
    path = Path(summary["storage_path"]) / summary["experiment"]
    lines.append(f"Results: {path}  (search_summary.json; a standard Tune experiment)")
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
