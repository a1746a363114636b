"""OptunaSearch that tells Optuna the truth about trials the scheduler stopped early.

Ray's OptunaSearch tells the study COMPLETE with whatever score a trial had when ASHA stopped
it, so TPE learns from 1-epoch scores and drifts toward fast starters. Here a trial that ended
before its last epoch without an error is told PRUNED, with its scores recorded as
intermediate values (step = epoch), which is what Optuna's own pruning integration does and
what TPE knows how to rank.

The verdict is read from the trial's last result, not from the order of Tune's calls: Tune
(ray/tune/execution/tune_controller.py, `stop_trial`) calls `on_trial_complete(trial_id,
result=last_result)` both for a trial that returns and for one the scheduler stops, never
passes the result of the epoch on which the scheduler says STOP to `on_trial_result`, and
gives a failed trial `error=True` and no result. A trial whose last result reached its
configured epochs is COMPLETE, one that ended without an error before them is PRUNED, a
failed one is FAIL. A trial stopped while PAUSED at a rung (tuner.scheduler's end game) gets
no result: its last reported result stands in.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Iterable

from optuna.exceptions import ExperimentalWarning
from optuna.samplers import TPESampler
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from trainable._compat import optuna_study

logger = logging.getLogger(__name__)


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch + PRUNED for trials stopped before `epochs` (per trial, from its config).

    Args (besides OptunaSearch's): `time_attr`, the result key counting epochs (ASHA's
    time_attr); `max_epochs`, the number of epochs a complete trial runs (the base config's
    `epochs`; a space that overrides `epochs` for a trial is honoured per trial).
    """

    def __init__(self, *args, time_attr: str = "epoch", max_epochs: int,
                 config_keys: Iterable[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._time_attr = time_attr
        self._max_epochs = int(max_epochs)
        self._config_keys = frozenset(config_keys) if config_keys is not None else None
        self._trial_epochs: dict[str, int] = {}
        self._last_results: dict[str, dict] = {}  # for trials stopped while paused (no result passed)
        self.pruned_trials: set[str] = set()

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if not isinstance(config, dict):
            return config
        if self._config_keys is not None:
            # Ray merges every value the define-by-run function *sampled* into the config,
            # including helper parameters such as ordered offsets; only the returned
            # TrainConfig overrides belong in a trial's config.
            config = {k: v for k, v in config.items() if k in self._config_keys}
        # Remember how long this trial is meant to run (see on_trial_complete).
        self._trial_epochs[trial_id] = int(config.get("epochs", self._max_epochs))
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Same as the parent, but the step is the epoch, which survives a trial restart
        # (training_iteration would also do, but epoch is what ASHA and the user count).
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._last_results[trial_id] = result
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result=result, error=error)
        paused_stop = not error and not result and trial_id in self._last_results
        if paused_stop:  # stopped while paused at a rung (tuner.scheduler): Tune passes no result
            result = self._last_results[trial_id]
        if error or not result or self._time_attr not in result:
            return super().on_trial_complete(trial_id, result=result, error=error)
        # Tune does not pass the final result to on_trial_result when the scheduler says STOP
        # on it (ASHA also does so at max_t): record it, so every epoch is an intermediate value.
        if not paused_stop:
            self._report(trial_id, result)
        epochs = self._trial_epochs.get(trial_id, self._max_epochs)
        if result[self._time_attr] >= epochs:
            return super().on_trial_complete(trial_id, result=result, error=error)
        ot_trial = self._ot_trials[trial_id]
        try:
            optuna_study(self).tell(ot_trial, None, state=TrialState.PRUNED)
        except Exception as exc:  # same policy as the parent: a bad tell must not kill the search
            logger.warning("Optuna refused PRUNED for trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)
        self.pruned_trials.add(trial_id)

    def _report(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        step = result.get(self._time_attr)
        if value is None or step is None or not math.isfinite(float(value)):
            return
        ot_trial = self._ot_trials[trial_id]
        ot_trial.report(float(value), int(step))

    @property
    def study(self):
        """The Optuna study (for plots, importances and tests)."""
        return optuna_study(self)


class BoundSpace:
    """The define-by-run function handed to OptunaSearch: a search space bound to the base config.

    Tune pickles the searcher (this included) into the experiment directory so `--resume`
    continues the same study; the space is pickled by name or YAML path and looked up again
    on load, so a space that is a closure still restores. A plain module-level function
    `fn(trial, base)` is also accepted (tests).
    """

    def __init__(self, space, base):
        self.space = space
        self.base = base
        self._fn = space if callable(space) else None

    def __call__(self, trial):
        if self._fn is None:
            from tuner.prepare import resolve_space  # a name, a YAML path or "module:function"

            self._fn = resolve_space(self.space)
        return self._fn(trial, self.base)

    def __getstate__(self) -> dict:
        return {"space": self.space, "base": self.base}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["space"], state["base"])

    def __repr__(self) -> str:
        return f"BoundSpace({self.space!r})"


SAMPLERS = ("tpe", "random")


def startup_trials(num_samples: int) -> int:
    """Trials TPE leaves to random sampling before it models the results.

    A quarter of the budget: Optuna's default (10) would leave a 12-trial search one TPE
    proposal; at least 2 (the seed point and one random trial), at most Optuna's 10.
    """
    return max(2, min(10, int(num_samples) // 4))


def is_conditional(space) -> bool:
    """Whether some trials sample parameters others do not (a `when` field in the space).

    A space given as a plain function cannot be inspected: treated as conditional, since
    `group=True` on a space with a fixed set of parameters decomposes it into one group, i.e.
    changes nothing.
    """
    from tuner.prepare import resolve_space  # a name, a YAML path, "module:function" or a callable

    decls = getattr(resolve_space(space), "decls", None)
    return True if decls is None else any(decl.when for decl in decls)


def build_sampler(kind: str, seed: int | None, num_samples: int, space):
    """The Optuna sampler for `--sampler tpe|random` (see RungTPESampler for the TPE one)."""
    from optuna.samplers import RandomSampler

    if kind == "random":
        return RandomSampler(seed=seed)
    if kind != "tpe":
        raise ValueError(f"unknown sampler {kind!r}: choose one of {', '.join(SAMPLERS)}")
    group = is_conditional(space)
    with warnings.catch_warnings():
        # `group` is still marked experimental in Optuna 5; it is what Optuna documents for
        # conditional spaces, and the warning would otherwise print in every such search.
        warnings.simplefilter("ignore", ExperimentalWarning)
        # multivariate and constant_liar stay Optuna 5's defaults (on).
        return RungTPESampler(n_startup_trials=startup_trials(num_samples), group=group, seed=seed)


class _PausedAsPruned:
    """A read-only view of a study in which a RUNNING trial that has reported epochs is
    PRUNED at its last one (the state it would have if the search stopped now)."""

    def __init__(self, study):
        self._study = study

    def __getattr__(self, name):
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False):
        trials = []
        for trial in self._study._get_trials(deepcopy=deepcopy, states=None, use_cache=use_cache):
            if trial.state == TrialState.RUNNING and trial.intermediate_values:
                trial = copy.copy(trial)
                trial.state = TrialState.PRUNED
            if states is None or trial.state in states:
                trials.append(trial)
        return trials


class RungTPESampler(TPESampler):
    """TPE that learns from trials paused at a rung (tuner.scheduler), not only finished ones.

    Under successive halving with pauses, most trials of a search sit PAUSED at a rung until
    its end game: Optuna sees them RUNNING, so TPE counts none of them towards
    `n_startup_trials` and, with `constant_liar`, files them among the bad trials: plain TPE
    would sample almost every trial at random (bench/README.md). Here TPE sees a trial that
    has reported epochs as PRUNED at its last epoch, which is how Optuna ranks stopped trials
    (by the epoch reached, then the score there): the ranking the rung itself uses.
    """

    def infer_relative_search_space(self, study, trial):
        return super().infer_relative_search_space(_PausedAsPruned(study), trial)

    def sample_relative(self, study, trial, search_space):
        return super().sample_relative(_PausedAsPruned(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return super().sample_independent(_PausedAsPruned(study), trial, param_name, param_distribution)
