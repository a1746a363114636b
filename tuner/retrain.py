"""`python run_search.py retrain --config best.yaml [TrainConfig flags] [MLflow flags]`: the single
full retrain of an exported configuration.

The same training as `python -m trainable --config best.yaml` (trainable.cli.prepare /
train: the standalone loop, no Ray; same checkpoints in --save-dir), logged to MLflow as one
run of `--mlflow-experiment` (default croptune) in the store the search used
(`--mlflow-uri`, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db; made absolute and
checked before anything is written; `--no-mlflow` turns tracking off):

- params: the full resolved TrainConfig; metrics: every numeric epoch metric, step = epoch;
- artifacts: checkpoints/best_custom.pth, checkpoints/last.pth, checkpoints/config.yaml;
- model: the last epoch's weights (the EMA shadow when use_ema) as an MLflow pytorch model
  (trainable.model.serving.LogitsModel: normalised float NCHW images -> logits), loadable with
  mlflow.pytorch.load_model(<printed models:/ URI>) and servable as a pyfunc.

Which search it came from: the header `export` writes into the YAML names the search
(`# experiment: NAME`) and the trial (`# trial: ID`). The search's parent run is the newest
run of the MLflow experiment tagged croptune.search=NAME, croptune.role=search. The retrain
run gets `croptune.search_parent_run_id` and also `mlflow.parentRunId`, so the UI lists it
under the search, beside the trials (the newest child: first when the parent is expanded);
`croptune.role=retrain` tells it apart from them. A config without that header, or whose
search is not in this experiment, gives a top-level run (with a note).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from tuner.tracking import runs, store
from tuner.tracking.hooks import add_search_arguments, checked_target
from tuner.tracking.ui import where_to_look

SEARCH_PARENT_TAG = "croptune.search_parent_run_id"
SOURCE_TRIAL_TAG = "croptune.source_trial"
SOURCE_TRIAL_RUN_TAG = "croptune.source_trial_run_id"
SOURCE_METRIC_TAG = "croptune.source_trial_score"
CHECKPOINT_FILES = ("best_custom.pth", "last.pth", "config.yaml")
MODEL_NAME = "model"
_HEADER = re.compile(r"#\s*(experiment|trial|metric):\s*(.+?)\s*$")


def build_parser() -> argparse.ArgumentParser:
    """The training command's parser plus the tracking flags."""
    from trainable.cli import build_parser as trainable_parser

    parser = trainable_parser()
    parser.prog = "run_search.py retrain"
    parser.description = ("Train once, in full, from an exported config (as `python -m trainable`), "
                          "logging the run, its checkpoints and the final model to MLflow.")
    add_search_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from trainable.cli import prepare, train
    from trainable.errors import DivergedError

    ns = build_parser().parse_args(argv)  # every flag checked (and --help) before anything runs
    target = checked_target(ns)  # the search's tracking checks; None with --no-mlflow
    config_file = getattr(ns, "config_file", None)
    origin = search_origin(config_file)
    cfg, data, state = prepare(None, ns=ns)  # UserError for bad config / data / save dir, before any write to it
    if target is None:
        return _report(train(cfg, data, state), cfg)
    run = RetrainRun(*target)
    run.start(cfg, origin, config_file)
    try:
        metrics = train(cfg, data, state, on_epoch=run.log_epoch)
        run.log_outputs(cfg)
    except KeyboardInterrupt:
        run.finish("KILLED")
        raise
    except DivergedError:  # run_cli prints the one `error: diverged:` line; the run says why it failed
        run.client.set_tag(run.run_id, "diverged", "true")
        run.finish("FAILED")
        raise
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish("FINISHED")
    code = _report(metrics, cfg)
    if run.model_uri:
        print(f"model: {run.model_uri} (mlflow.pytorch.load_model)")
    print(where_to_look(run.uri, run.experiment_id, run.run_id), flush=True)
    return code


def _report(metrics: dict, cfg) -> int:
    if metrics:
        print(f"done: val acc {metrics['val_acc']:.2f}% | tail acc {metrics['tail_acc']:.2f}% | "
              f"macro-F1 {metrics['macro_f1']:.3f} | epoch {metrics['epoch']} | checkpoints in {cfg.save_dir}")
    return 0


def search_origin(config_file: str | None) -> dict:
    """{"experiment": search name, "trial": trial id, "metric": "..."} from an exported YAML's
    header comments (what `run_search.py export` writes); {} for any other config."""
    if not config_file:
        return {}
    try:
        with open(config_file, encoding="utf-8") as handle:
            lines = []
            for line in handle:
                if not line.startswith("#"):
                    break
                lines.append(line)
    except (OSError, UnicodeDecodeError):
        return {}  # prepare() reports a missing, unreadable or binary --config
    found = {}
    for line in lines:
        match = _HEADER.match(line)
        if match:
            found.setdefault(match.group(1), match.group(2))
    return found


def _code_dir() -> str:
    import trainable

    return str(Path(trainable.__file__).parent)


def _pickle_requirements() -> list[str]:
    import numpy as np
    import timm
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}", f"numpy=={np.__version__}"]


class RetrainRun:
    """The MLflow run of one retrain, written through MlflowClient (no global MLflow state
    except for log_model, which needs an active run)."""

    def __init__(self, uri: str, experiment: str):
        self.uri, self.experiment = uri, experiment
        self.client = self.experiment_id = self.run_id = self.model_uri = None

    def start(self, cfg, origin: dict, config_file: str | None) -> None:
        self.client, self.experiment_id = store.open_experiment(self.uri, self.experiment)
        tags = {runs.ROLE_TAG: "retrain", "mlflow.source.name": "run_search.py retrain",
                "mlflow.source.type": "LOCAL", "save_dir": str(Path(cfg.save_dir).resolve())}
        if config_file:
            tags["config_file"] = str(Path(config_file).resolve())
        commit = runs.git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        tags.update(self._lineage(origin))
        name = f"retrain-{origin['trial']}" if origin.get("trial") else "retrain"
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.run_id = run.info.run_id
        runs.log_params(self.client, self.run_id, cfg.to_dict())
        print(where_to_look(self.uri, self.experiment_id, self.run_id), flush=True)

    def _lineage(self, origin: dict) -> dict:
        search = origin.get("experiment")
        if not search:
            if origin:
                print("note: the config names no search; the retrain run is not linked to one")
            return {}
        tags = {runs.SEARCH_TAG: search}
        if origin.get("trial"):
            tags[SOURCE_TRIAL_TAG] = origin["trial"]
        if origin.get("metric"):
            tags[SOURCE_METRIC_TAG] = origin["metric"]  # e.g. "macro_f1 = 0.41 (max)": what to compare with
        parent = runs.find_parent_run(self.client, self.experiment_id, search)
        if parent is None:
            print(f"note: no search {search!r} in MLflow experiment {self.experiment!r}; the retrain run "
                  f"is not nested under it (pass the search's --mlflow-experiment / --mlflow-uri)")
            return tags
        parent_id = parent.info.run_id
        tags.update({SEARCH_PARENT_TAG: parent_id, runs.PARENT_TAG: parent_id})
        trial = origin.get("trial")
        trial_run = runs.find_trial_run(self.client, self.experiment_id, parent_id, trial) if trial else None
        if trial_run:
            tags[SOURCE_TRIAL_RUN_TAG] = trial_run
        return tags

    def log_epoch(self, result) -> None:
        runs.log_epoch_metrics(self.client, self.run_id, result)

    def log_outputs(self, cfg) -> None:
        save_dir = Path(cfg.save_dir)
        for name in CHECKPOINT_FILES:
            if (save_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(save_dir / name), artifact_path="checkpoints")
        if (save_dir / "last.pth").is_file():
            self.model_uri = self._log_model(cfg, save_dir / "last.pth")

    def _log_model(self, cfg, checkpoint: Path) -> str:
        import mlflow
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        from trainable.model.serving import model_from_checkpoint
        from trainable.train.checkpoint import load_checkpoint

        model = model_from_checkpoint(cfg, load_checkpoint(checkpoint))
        # A batch of 2: torch.export would freeze a batch dimension of size 1.
        example = np.zeros((2, 3, model.image_size, model.image_size), dtype=np.float32)
        with torch.no_grad():
            logits = model(torch.from_numpy(example)).numpy()
        common = dict(name=MODEL_NAME, signature=infer_signature(example, logits),
                      pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                      metadata={"input": "float32 NCHW, ImageNet-normalised (trainable.train.augment.eval_transform)",
                                "image_size": model.image_size, "weights": "ema" if cfg.use_ema else "model"})
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=self.run_id, log_system_metrics=False):
            try:
                # MLflow 3's default: a torch.export graph; loads with torch alone, no pickle.
                info = mlflow.pytorch.log_model(model, serialization_format="pt2", input_example=example,
                                                **common)
            except Exception as exc:  # a backbone torch.export cannot trace: pickle it with our code
                print(f"note: torch.export failed ({type(exc).__name__}); logging the model pickled, "
                      f"with trainable/ as its code", file=sys.stderr)
                info = mlflow.pytorch.log_model(model, serialization_format="pickle", code_paths=[_code_dir()],
                                                **{**common, "pip_requirements": _pickle_requirements()})
        self.client.set_tag(self.run_id, "model_uri", info.model_uri)
        return info.model_uri

    def finish(self, status: str) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
