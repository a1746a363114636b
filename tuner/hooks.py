"""What rides along with a search (MLflow tracking, a test's recorder): the SearchHooks contract.

A hook sees the search at five moments, all on the driver, in this order:

    validate(settings)            before anything is written; raise UserError to refuse (exit 2)
    start(settings)               checks passed, a local Ray is about to start: begin slow set-up
                                  in the background (not called with --address)
    callbacks(context) -> list    Tune callbacks to add (e.g. one MLflow child run per trial)
    finished(context, outcome)    after the search; outcome: "finished" | "interrupted" | "failed"
    resume_flags() -> list        flags the printed `--resume NAME` command must carry for this hook

and names in `driver_imports` the modules its callbacks() imports, which the search imports in a
thread while ray.init waits. `tuner.search.run_search(settings, hooks)` calls them; without
`hooks` it uses tuner.tracking.hooks.search_hooks(settings).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SearchContext:
    settings: object                 # tuner.cli.SearchSettings
    experiment_path: str             # absolute; a standard Tune experiment directory
    base_config: object              # trainable.config.TrainConfig every trial starts from
    data_info: dict = field(default_factory=dict)   # fingerprint, root, class_counts, sizes
    resources: object = None         # tuner.resources.ResourcePlan
    searcher: object = None          # tuner.searcher.PruningOptunaSearch (driver copy; .study);
    #                                  on --resume, a stand-in whose .study is `study` below
    results: object = None           # ray.tune.ResultGrid, once the search has run
    study: object = None             # the optuna.Study as Tune saved it at the end (any mode, resume too)
    summary: dict | None = None      # the search_summary.json payload, when finished


class SearchHooks:
    """No-op base class; override what you need."""

    driver_imports: tuple[str, ...] = ()

    def validate(self, settings) -> None:
        pass

    def start(self, settings) -> None:
        """Validation passed, the data is decoded and a local Ray is about to start: begin slow
        set-up in the background (callbacks() collects it). Not called with --address."""

    def callbacks(self, context: SearchContext) -> list:
        return []

    def finished(self, context: SearchContext, outcome: str) -> None:
        pass

    def resume_flags(self) -> list[str]:
        """Flags the printed `--resume` command needs for this hook to continue where it was."""
        return []


class ResumeFlagsOnly(SearchHooks):
    """A hook that only carries flags into the printed `--resume` command (e.g. --no-mlflow:
    a search run without tracking must resume without it, not start logging half-way)."""

    def __init__(self, flags: list[str]):
        self.flags = list(flags)

    def resume_flags(self) -> list[str]:
        return list(self.flags)
