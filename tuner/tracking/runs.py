"""The runs croptune writes to MLflow, their tags, and finding them again.

One parent run per search (tagged croptune.search=NAME, croptune.role=search), one child run per
trial under it (trial_id=ID, mlflow.parentRunId=PARENT), and the retrain and verify runs, which
find the search's parent and trial runs by the same tags:

    parent = start_parent_run(client, experiment_id, "stage_epochs-1", params=..., resume=False)
    run_id = find_trial_run(client, experiment_id, parent, trial_id)   # None if not logged
    finish_parent_run(client, parent, "FINISHED" | "FAILED" | "KILLED")
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from numbers import Number
from pathlib import Path

PARENT_TAG = "mlflow.parentRunId"
SEARCH_TAG = "croptune.search"     # parent run: the Tune experiment name
ROLE_TAG = "croptune.role"         # "search" (parent) | "trial" (child) | "retrain" | "verify"
TRIAL_TAG = "trial_id"             # child run: the Tune trial id
CODE_DIR = Path(__file__).resolve().parents[2]  # croptune's checkout: its commit, not the cwd's


def git_commit(cwd: str | Path | None = CODE_DIR) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def log_params(client, run_id: str, params: dict) -> None:
    """Log params as strings, in batches MLflow accepts (100 per call, 6000 chars each)."""
    from mlflow.entities import Param

    items = [Param(str(k), _param_value(v)) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


def _param_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]


def log_epoch_metrics(client, run_id: str, result) -> None:
    """Every finite numeric metric of one fit() epoch, step = epoch (retrain and verify runs)."""
    from mlflow.entities import Metric

    now, step = int(time.time() * 1000), int(result.epoch)
    batch = [Metric(key, float(value), now, step) for key, value in result.metrics.items()
             if isinstance(value, Number) and not isinstance(value, bool) and math.isfinite(value)]
    if batch:
        client.log_batch(run_id, metrics=batch)


def find_parent_run(client, experiment_id: str, search_name: str):
    """The newest parent run of search `search_name`, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SEARCH_TAG}` = '{_quote(search_name)}' and tags.`{ROLE_TAG}` = 'search'",
        max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def find_trial_run(client, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
    """The id of trial `trial_id`'s run under the search's parent run, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TRIAL_TAG}` = '{_quote(trial_id)}' and "
                      f"tags.`{PARENT_TAG}` = '{_quote(parent_run_id)}'",
        max_results=1)
    return runs[0].info.run_id if runs else None


def _quote(value: str) -> str:
    return str(value).replace("'", "\\'")


def start_parent_run(client, experiment_id: str, search_name: str, params: dict | None = None,
                     tags: dict | None = None, resume: bool = False) -> str:
    """Create the search's parent run (or, with resume, reopen the one of the same search)."""
    if resume:
        run = find_parent_run(client, experiment_id, search_name)
        if run is not None:
            client.update_run(run.info.run_id, status="RUNNING")
            client.set_tag(run.info.run_id, "resumed", "true")
            return run.info.run_id
    all_tags = {SEARCH_TAG: search_name, ROLE_TAG: "search", "mlflow.source.name": "run_search.py",
                "mlflow.source.type": "LOCAL", **(tags or {})}
    commit = git_commit()
    if commit and "mlflow.source.git.commit" not in all_tags:
        all_tags["mlflow.source.git.commit"] = commit
    run = client.create_run(experiment_id, run_name=search_name, tags=all_tags)
    if params:
        log_params(client, run.info.run_id, params)
    return run.info.run_id


def finish_parent_run(client, run_id: str, status: str = "FINISHED") -> None:
    """Mark the parent FINISHED, FAILED or KILLED (Ctrl-C)."""
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"status must be FINISHED, FAILED or KILLED, not {status!r}")
    client.set_terminated(run_id, status=status)
