"""ASHA that pauses instead of guessing: the scheduler `run_search.py` uses.

Asynchronous successive halving as published (Li et al., "A System for Massively Parallel
Hyperparameter Tuning", MLSys 2020): a trial leaves a rung only while it is in the top 1/rf of
the trials recorded there; the others wait as PAUSED Tune trials. Ray's ASHAScheduler instead
decides at once against whatever the rung holds so far, so the first trials to reach a rung
always go on (what that costs: bench/README.md, "Numbers behind the code").

The caller guarantees: the trainable checkpoints every epoch and resumes from it exactly (a
paused trial continues where it stopped), and the searcher is wrapped in RungLimiter rather
than Tune's ConcurrencyLimiter. Then:

- a trial reaching a rung goes on at once if it is in that rung's top 1/rf (ranked by the
  metric, ties broken by the lower validation loss: after one epoch many trials tie on
  macro-F1 at chance level), else it pauses;
- promotions come before new trials: while a paused trial is promotable the searcher is
  asked for nothing (RungLimiter), and it resumes as soon as a slot is free;
- when nothing runs, no trial is pending, every trial of the search has been created and no
  paused trial is promotable, the best paused trial of the highest rung goes on and the
  other paused trials are stopped (with few trials a rung may never hold rf of them: the
  search must still train one configuration fully).

Concurrency: Tune's ConcurrencyLimiter counts a paused trial as live, so paused trials would
block new ones; RungLimiter counts only trials that are not paused at a rung.

Resume (`--resume`): Tune restores the scheduler as it was pickled at the start, so the rungs
start empty again; restored trials are re-ranked as they reach their next rung.
"""

from __future__ import annotations

import math

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter

from trainable._compat import mark_for_experiment_state

TIE_BREAK_KEY = "val_loss"
# The tie-break weight: a validation loss is a few units, macro-F1 steps are >= ~1e-4 for a
# one-image change on the demo's validation split, so this only orders exact ties.
TIE_BREAK_WEIGHT = 1e-7


def rung_milestones(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """Epochs at which trials are ranked: grace, grace * rf, ... below max_t."""
    milestones, m = [], grace_period
    while m < max_t:
        milestones.append(m)
        m *= reduction_factor
    return milestones


class PromotingASHA(FIFOScheduler):
    """See the module docstring. `num_samples`: the number of trials the search creates
    (the end game waits for all of them); `max_concurrent`: trials allowed to run at once."""

    def __init__(self, *, time_attr: str, metric: str, mode: str, max_t: int, grace_period: int,
                 reduction_factor: int, num_samples: int, max_concurrent: int):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self._time_attr, self._metric, self._sign = time_attr, metric, 1.0 if mode == "max" else -1.0
        self._max_t, self._rf = int(max_t), int(reduction_factor)
        self._num_samples, self._max_concurrent = int(num_samples), int(max_concurrent)
        self.milestones = rung_milestones(int(grace_period), self._rf, self._max_t)
        self.recorded: dict[int, dict[str, float]] = {m: {} for m in self.milestones}
        self.parked: dict[str, int] = {}      # trial id -> the rung it waits at
        self.num_stopped_parked = 0

    def set_search_properties(self, metric, mode, **spec) -> bool:
        """Tune passes the search's metric and mode: they must be the ones this was built with."""
        return metric in (None, self._metric) and mode in (None, "max" if self._sign > 0 else "min")

    # ------------------------------------------------------------------ ranking
    def score(self, result: dict) -> float:
        """Higher is better: the metric (sign by mode), exact ties broken by lower val loss."""
        value = self._sign * float(result[self._metric])
        loss = result.get(TIE_BREAK_KEY)
        if loss is not None and math.isfinite(float(loss)):
            value -= TIE_BREAK_WEIGHT * min(float(loss), 100.0)
        return value

    def top(self, milestone: int) -> list[str]:
        """The trial ids in the top 1/rf of a rung (best first; earlier arrival wins a tie)."""
        rung = self.recorded[milestone]
        ranked = sorted(rung, key=lambda tid: -rung[tid])  # sorted is stable: dicts keep arrival order
        return ranked[:len(rung) // self._rf]

    def promotable(self) -> tuple[str, int] | None:
        """A paused trial now in its rung's top 1/rf, from the highest rung down."""
        for milestone in reversed(self.milestones):
            for tid in self.top(milestone):
                if self.parked.get(tid) == milestone:
                    return tid, milestone
        return None

    # ------------------------------------------------------------------ Tune callbacks
    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self._link(tune_controller)
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        epoch = result[self._time_attr]
        tid = trial.trial_id
        self.parked.pop(tid, None)  # a trial that reports runs (after --resume it may have been parked)
        if epoch >= self._max_t:
            return TrialScheduler.STOP
        # a restored trial can jump rungs: record it at each rung it passed without a record
        new = [m for m in self.milestones if epoch >= m and tid not in self.recorded[m]]
        if not new:
            return TrialScheduler.CONTINUE
        score = self.score(result)
        for milestone in new:
            self.recorded[milestone][tid] = score
        milestone = new[-1]
        if tid in self.top(milestone):
            return TrialScheduler.CONTINUE
        self.parked[tid] = milestone
        return TrialScheduler.PAUSE

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        self._link(tune_controller)
        trials = tune_controller.get_trials()
        busy = sum(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials)
        by_id = {t.trial_id: t for t in trials}
        # a parked trial that ended (stopped, failed) or was requeued (PENDING: a restored
        # experiment) waits for nothing; one still RUNNING is being paused (Tune saves it first)
        for tid in [tid for tid in self.parked
                    if tid not in by_id or by_id[tid].status in (Trial.TERMINATED, Trial.ERROR, Trial.PENDING)]:
            del self.parked[tid]
        if busy < self._max_concurrent:
            choice = self.promotable()
            if choice is None and busy == 0 and self.parked and len(trials) >= self._num_samples:
                choice = self._end_game(tune_controller, by_id)
            if choice is not None:
                tid, _ = choice
                del self.parked[tid]
                return by_id[tid]
        for trial in trials:  # new trials, in order; never a paused one (that is a promotion)
            if trial.status == Trial.PENDING:
                return trial
        return None

    def _end_game(self, tune_controller, by_id: dict) -> tuple[str, int]:
        """Nothing can reach a rung any more: the best paused trial of the highest rung goes
        on, every other paused trial stops (Tune tells the searcher and the callbacks)."""
        highest = max(self.parked.values())
        best = max((tid for tid, m in self.parked.items() if m == highest),
                   key=lambda tid: self.recorded[highest][tid])
        for tid in [t for t in self.parked if t != best]:
            del self.parked[tid]
            self.num_stopped_parked += 1
            tune_controller.stop_trial(by_id[tid])
            mark_for_experiment_state(tune_controller, by_id[tid])  # Ray 2.60 omits it for PAUSED trials
        return best, highest

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self.parked.pop(trial.trial_id, None)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self.parked.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self.parked.pop(trial.trial_id, None)

    def _link(self, tune_controller) -> None:
        """Tell the RungLimiter (if the searcher is one) about this scheduler."""
        limiter = getattr(getattr(tune_controller, "search_alg", None), "searcher", None)
        if isinstance(limiter, RungLimiter) and limiter.scheduler is not self:
            limiter.scheduler = self

    def debug_string(self) -> str:
        rungs = ", ".join(f"epoch {m}: {len(self.recorded[m])} ranked" for m in self.milestones)
        return f"Successive halving (rf {self._rf}), {len(self.parked)} paused; {rungs}"


class RungLimiter(ConcurrencyLimiter):
    """ConcurrencyLimiter that does not count trials paused at a rung, and suggests nothing
    while a paused trial is promotable (the promotion takes the free slot)."""

    def __init__(self, searcher, max_concurrent: int):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.scheduler: PromotingASHA | None = None  # linked by the scheduler at its first callback

    def suggest(self, trial_id: str):
        scheduler = self.scheduler
        if scheduler is None or not self._limit_concurrency:
            return super().suggest(trial_id)
        if scheduler.promotable() is not None:
            return None
        if len(self.live_trials - scheduler.parked.keys()) >= self.max_concurrent:
            return None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, self.FINISHED):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        return suggestion

    def get_state(self) -> dict:  # the link is live state, not search state
        scheduler, self.scheduler = self.scheduler, None
        try:
            state = super().get_state()
            state.pop("scheduler", None)
            return state
        finally:
            self.scheduler = scheduler

    def set_state(self, state: dict) -> None:
        state = {k: v for k, v in state.items() if k != "scheduler"}
        super().set_state(state)
