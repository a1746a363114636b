"""The end-of-search report: printed, and written as search_summary.json in the experiment dir.

A trial counts as
- completed:      it reported its last epoch (cfg.epochs);
- stopped early:  it ended without an error before its last epoch (ASHA, or the time budget);
- failed:         it ended with an error (after its --max-failures restarts); "diverged" failures
                  (loss became NaN/inf, see trainable.tune_entry) are counted among them and named.
The best trial is the best final score among completed trials, as in Optuna (pruned trials
have no final score); only when no trial completed is it the best last score of any trial.

`epochs_consumed` counts every trial's epochs; `epochs_trained` leaves out those a trial took from
an earlier trial's prefix (trainable.train.prefix), which it reports but does not compute.

Also reported: how many trials tie on the metric at the first rung (`first_rung_ties`: a rung
cannot rank trials that score the same there), and the winner against trial 0, the seed
recipe's point that the search evaluates first (`seed_trial`), on the same budget.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from trainable.config import TrainConfig

SUMMARY_KEYS = ("experiment", "storage_path", "space", "metric", "mode", "best_trial_id", "best_value",
                "best_config", "num_trials", "num_stopped_early", "num_failed", "epochs_consumed", "epochs_trained",
                "prefix_sharing", "wall_time_s", "sampler", "first_rung_ties", "seed_trial")


@dataclass
class TrialRecord:
    trial_id: str
    status: str            # Tune's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    overrides: dict        # the trial's config: what the searcher set on top of the base
    epochs_done: int       # last reported epoch (0 if none)
    epochs_planned: int
    value: float | None    # last reported value of the metric
    error: str | None      # one line, for failed trials
    scores: dict = field(default_factory=dict)  # epoch -> the metric reported at that epoch
    number: int | None = None  # creation order: 0 is the first trial (the seed recipe's point)
    shared_epochs: int = 0     # epochs it started from an earlier trial's prefix (trainable.train.prefix)

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
    for index, trial in enumerate(trials):
        last = trial.last_result or {}
        overrides = dict(trial.config or {})
        planned = int(overrides.get("epochs", base.epochs))
        value = last.get(metric)
        records.append(TrialRecord(
            trial_id=trial.trial_id, status=str(trial.status), overrides=overrides,
            epochs_done=int(last.get("epoch", 0) or 0), epochs_planned=planned,
            value=float(value) if value is not None else None,
            error=_error_line(trial) if trial.status == "ERROR" else None,
            scores=_epoch_scores(trial, metric), number=trial_number(trial, index),
            shared_epochs=int(last.get("prefix_epochs", 0) or 0),
        ))
    return records


def trial_number(trial, index: int) -> int:
    """0-based creation order: Tune's experiment tag starts with its 1-based trial counter."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(head) - 1 if head.isdigit() else index


def _epoch_scores(trial, metric: str) -> dict[int, float]:
    """epoch -> metric, from the trial's progress.csv and result.json (Tune keeps only the last
    result in memory, and rewrites result.json without the epochs before a restart)."""
    scores: dict[int, float] = {}
    for attr in ("path", "local_path"):
        try:
            where = getattr(trial, attr, None)
        except Exception:  # noqa: BLE001 - Tune's local_path asserts a live Ray session
            continue
        if where and any((Path(where) / name).is_file() for name in ("progress.csv", "result.json")):
            _read_scores(Path(where), metric, scores)
            break
    last = trial.last_result or {}
    if last.get("epoch") and last.get(metric) is not None:
        scores.setdefault(int(last["epoch"]), float(last[metric]))
    return scores


def _read_scores(trial_dir: Path, metric: str, scores: dict[int, float]) -> None:
    rows: list[dict] = []
    with contextlib.suppress(OSError, csv.Error):
        with open(trial_dir / "progress.csv", newline="") as handle:
            rows += list(csv.DictReader(handle))
    with contextlib.suppress(OSError):
        for line in (trial_dir / "result.json").read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    for row in rows:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            if row.get("epoch") not in (None, "") and row.get(metric) not in (None, ""):
                scores[int(float(row["epoch"]))] = float(row[metric])


def count_ties(scores: Iterable[float | None]) -> int:
    """How many of these scores equal another one (None: no score; equal to 12 decimals)."""
    counts = Counter(round(float(s), 12) for s in scores if s is not None)
    return sum(n for n in counts.values() if n > 1)


def first_rung_ties(records: list[TrialRecord], epoch: int) -> dict:
    """Trials whose score at `epoch` (the first rung) ties another trial's there: a rung ranks those
    only by the tie-break (validation loss). A trial that took its whole prefix up to the rung from an
    earlier trial's checkpoint (trainable.train.prefix) is that trial's twin there, one computation
    reported twice: it is counted under `twins`, not as a tie."""
    twins = [r for r in records if epoch in r.scores and r.shared_epochs >= epoch]
    scored = [r.scores[epoch] for r in records if epoch in r.scores and r.shared_epochs < epoch]
    return {"epoch": int(epoch), "tied": count_ties(scored), "scored": len(scored) + len(twins),
            "twins": len(twins)}


def seed_trial_comparison(records: list[TrialRecord], best: TrialRecord | None) -> dict | None:
    """The winner against trial 0 (the seed recipe's point, evaluated first): scores, epochs, difference."""
    if best is None or not records:
        return None
    seed = min(records, key=lambda r: r.number if r.number is not None else len(records))
    out = {"trial_id": seed.trial_id, "value": seed.value, "epochs": seed.epochs_done,
           "epochs_planned": seed.epochs_planned, "winner_epochs": best.epochs_done,
           "winner_is_seed_trial": seed.trial_id == best.trial_id, "difference": None,
           "winner_value_at_seed_epochs": None}
    if seed.value is not None and best.value is not None:
        out["difference"] = best.value - seed.value
    if seed.epochs_done < best.epochs_done:  # trial 0 stopped early: compare at the epoch it reached
        out["winner_value_at_seed_epochs"] = best.scores.get(seed.epochs_done)
    return out


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
        "epochs_trained": sum(r.epochs_done - r.shared_epochs for r in records),
        "prefix_sharing": {"enabled": bool(settings.share_prefix),
                           "trials_forked": sum(r.shared_epochs > 0 for r in records),
                           "epochs_shared": sum(r.shared_epochs for r in records)},
        "wall_time_s": round(float(wall_time_s), 3),
        "sampler": settings.sampler,
        "first_rung_ties": (first_rung_ties(records, settings.grace_period)
                            if getattr(settings, "grace_period", None) else None),
        "seed_trial": seed_trial_comparison(records, best),
    }
    assert tuple(summary) == SUMMARY_KEYS
    return summary


def format_report(summary: dict, records: list[TrialRecord], base: TrainConfig,
                  time_budget_s: float | None = None) -> str:
    """The printed report; `time_budget_s`: the search ended because this budget ran out."""
    completed = sum(r.completed for r in records)
    diverged = sum(r.diverged for r in records)
    failed = f"{summary['num_failed']} failed" + (f" ({diverged} diverged)" if diverged else "")
    lines = [
        f"Search {summary['experiment']} (space {summary['space']}): {summary['num_trials']} trials: "
        f"{completed} completed, {summary['num_stopped_early']} stopped early, {failed}; "
        f"{summary['epochs_consumed']} epochs in total; wall time {format_seconds(summary['wall_time_s'])}.",
    ]
    sharing = summary.get("prefix_sharing") or {}
    if sharing.get("epochs_shared"):
        lines.append(f"Prefix sharing: {sharing['trials_forked']} trials started from an earlier trial's checkpoint, "
                     f"so {summary['epochs_trained']} of the {summary['epochs_consumed']} epochs were trained "
                     f"({sharing['epochs_shared']} shared).")
    best = next((r for r in records if r.trial_id == summary["best_trial_id"]), None)
    if best is None:
        lines.append(f"No trial reported a score: nothing to export ({_why_no_score(records, time_budget_s)}).")
    else:
        how = "" if best.completed else f" (after {best.epochs_done}/{best.epochs_planned} epochs: no trial completed)"
        lines.append(f"Best trial {best.trial_id}: {summary['metric']} = {summary['best_value']:.4f}{how}")
        changed = {k: v for k, v in best.overrides.items() if getattr(base, k, None) != v}
        shown = changed or best.overrides
        lines.append("  overrides: " + (" ".join(f"{k}={_fmt(v)}" for k, v in sorted(shown.items()))
                                         or "none (the base config)")
                     + ("" if changed or not best.overrides else "  (= the base config)"))
        lines += _seed_trial_lines(summary, records, base)
    ties = summary.get("first_rung_ties")
    if ties and ties["scored"]:
        twins = ties.get("twins") or 0
        lines.append(f"First rung (epoch {ties['epoch']}): {ties['tied']} of {ties['scored']} trials scored there "
                     f"tie with another on {summary['metric']} (those are ranked by validation loss only)"
                     + (f"; {twins} more started from an earlier trial's checkpoint at or past it: one computation "
                        f"with that trial there, so they share its place." if twins else "."))
    for r in records:
        if r.failed:
            lines.append(f"  failed trial {r.trial_id}: {r.error}")
    path = Path(summary["storage_path"]) / summary["experiment"]
    lines.append(f"Results: {path}  (search_summary.json; a standard Tune experiment)")
    return "\n".join(lines)


def _seed_trial_lines(summary: dict, records: list[TrialRecord], base: TrainConfig) -> list[str]:
    """The winner against trial 0, the seed recipe's point (evaluated first), on the same budget."""
    seed = summary.get("seed_trial")
    if not seed or seed["value"] is None:
        return []
    record = next((r for r in records if r.trial_id == seed["trial_id"]), None)
    moved = {k: v for k, v in (record.overrides if record else {}).items() if getattr(base, k, None) != v}
    what = "the seed recipe" if not moved else (
        "the seed recipe's nearest point in the space: " + " ".join(f"{k}={_fmt(v)}" for k, v in sorted(moved.items())))
    metric = summary["metric"]
    if seed["winner_is_seed_trial"]:
        return [f"The winner is trial 0 ({seed['trial_id']}), {what}: no sampled configuration beat it "
                f"({metric} {seed['value']:.4f} after {seed['epochs']} epochs)."]
    lines = [f"Winner vs trial 0 ({seed['trial_id']}, {what}): {metric} {summary['best_value']:.4f} "
             f"({seed['winner_epochs']} epochs) vs {seed['value']:.4f} ({seed['epochs']}/{seed['epochs_planned']} "
             f"epochs): {seed['difference']:+.4f}."]
    if seed["epochs"] < seed["winner_epochs"]:
        at = seed["winner_value_at_seed_epochs"]
        lines.append("  trial 0 was stopped early, so not on the same budget" + (
            f"; at its last epoch ({seed['epochs']}) the winner had {at:.4f} ({at - seed['value']:+.4f})"
            if at is not None else "") + ".")
    return lines


def _why_no_score(records: list[TrialRecord], time_budget_s: float | None) -> str:
    failed = sum(r.failed for r in records)
    if records and failed == len(records):
        return f"all {failed} trials failed; their errors are listed below"
    if time_budget_s is not None:
        return (f"the --time-budget of {time_budget_s:g} s ran out before any trial reported "
                f"its first epoch; give the search more time")
    if failed:
        return f"{failed} trial(s) failed (listed below), the others reported no epoch"
    return "no trial reported an epoch"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
