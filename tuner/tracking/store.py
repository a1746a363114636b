"""The MLflow tracking store: where it is, whether a search can log to it, and a client for it.

Every function runs on the driver and is cheap to import (mlflow is imported only by
`client_for` and `ensure_experiment`):

    uri = resolve_tracking_uri(args.mlflow_uri)       # once, absolute, before Ray starts
    preflight(uri, requested=args.mlflow_uri)          # UserError if unusable, in seconds
    preflight_experiment(uri, "croptune")              # UserError if the experiment is deleted
    client = client_for(uri)                           # creates a new SQLite store under a lock
    experiment_id = ensure_experiment(client, "croptune")
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shlex
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from trainable._compat import unverified_ssl_context
from trainable.errors import UserError

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the UI opens on runs, not on GenAI traces
SQLITE_HEADER = b"SQLite format 3\x00"
STORE_LOCK_TIMEOUT = 120.0  # creating a store takes seconds; a holder this long is stuck
_SQL_SCHEMES = ("postgresql", "mysql", "mssql", "databricks", "databricks-uc")


def resolve_tracking_uri(uri: str | None = None, cwd: str | Path | None = None) -> str:
    """The tracking URI every process should use, made absolute on the driver.

    Order: `uri`, $MLFLOW_TRACKING_URI, then sqlite:///<cwd>/mlflow.db. Relative SQLite paths
    (and bare `*.db` paths) become absolute: trials run in Ray's session directory.
    """
    uri = (uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db").strip()
    base = Path(cwd) if cwd else Path.cwd()
    scheme = urllib.parse.urlparse(uri).scheme
    if not scheme and uri.endswith((".db", ".sqlite", ".sqlite3")):
        return "sqlite:///" + str((base / uri).resolve())
    if not scheme:
        return (base / uri).resolve().as_uri()  # a file store: preflight explains it is refused
    if scheme == "sqlite" and uri.startswith("sqlite:///"):
        path, _, query = uri[len("sqlite:///"):].partition("?")
        if path and not path.startswith("/") and path != ":memory:":
            path = str((base / path).resolve())
        return "sqlite:///" + path + (f"?{query}" if query else "")
    return uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


def preflight(uri: str, timeout: float = 5.0, requested: str | None = None) -> None:
    """Fail in seconds, with one line, if the search could not log to `uri`.

    uri: resolve_tracking_uri(requested). MLflow's own HTTP client retries for minutes; this
    uses one short request of its own. Without a `requested` --mlflow-uri the URI came from
    $MLFLOW_TRACKING_URI when that is set, and the error names the variable: the user may not
    know it is set.
    """
    try:
        _preflight(uri, timeout)
    except UserError as exc:
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if requested or not env:
            raise
        raise UserError(f"{exc} (the URI came from the environment variable "
                        f"MLFLOW_TRACKING_URI={shlex.quote(env)}: fix or unset it)") from None


def _preflight(uri: str, timeout: float) -> None:
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("http", "https"):
        _preflight_server(uri.rstrip("/"), timeout)
    elif scheme == "sqlite":
        _preflight_sqlite(uri)
    elif scheme in ("file", ""):
        raise UserError(f"MLflow tracking URI {uri}: MLflow 3.17 refuses the plain file store; use "
                        f"sqlite:///path/to/mlflow.db (the default) or an http:// tracking server")
    elif scheme.split("+")[0] not in _SQL_SCHEMES:
        raise UserError(f"MLflow tracking URI {uri}: unsupported scheme {scheme!r}; use "
                        f"sqlite:///path/to/mlflow.db or http://host:port")


def _preflight_sqlite(uri: str) -> None:
    path = sqlite_path(uri)
    if path is None:
        raise UserError(f"MLflow tracking URI {uri}: give a database file, e.g. "
                        f"sqlite:///{Path.cwd() / 'mlflow.db'} (an in-memory store is lost with the driver)")
    if path.is_dir():
        raise UserError(f"MLflow tracking URI {uri}: {path} is a directory; name a database file")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise UserError(f"MLflow tracking URI {uri}: {path} is not writable")
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            raise UserError(f"MLflow tracking URI {uri}: {path} exists but is not an SQLite database")
        return
    if not path.parent.is_dir():
        raise UserError(f"MLflow tracking URI {uri}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UserError(f"MLflow tracking URI {uri}: cannot create {path.name} in {path.parent} "
                        f"(not writable)")


def api_request(url: str, timeout: float):
    """A GET to an MLflow server with the credentials MLflow's own client would send."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    elif user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    context = None
    if url.startswith("https") and os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = unverified_ssl_context()
    return urllib.request.urlopen(request, timeout=timeout, context=context)


def _preflight_server(uri: str, timeout: float) -> None:
    url = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with api_request(url, timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise UserError(f"MLflow tracking server {uri} refused the credentials (HTTP {exc.code}); "
                            f"set MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN") from None
        raise UserError(f"{uri} answered HTTP {exc.code} to the MLflow API: is it an MLflow "
                        f"tracking server? (check --mlflow-uri)") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot reach the MLflow tracking server at {uri} ({reason}); start it "
                        f"(python run_search.py ui) or fix --mlflow-uri / MLFLOW_TRACKING_URI") from None
    try:
        json.loads(body or b"{}")
    except ValueError:
        raise UserError(f"{uri} is not an MLflow tracking server (its API answer is not JSON); "
                        f"check --mlflow-uri") from None


# ------------------------------------------------------------------ client and experiment
def client_for(uri: str):
    """An MlflowClient whose store is open: a new SQLite store is created (schema and all
    migrations) under an exclusive lock, so two drivers starting at once do not both migrate it."""
    from mlflow import MlflowClient

    path = sqlite_path(uri)
    if path is None:
        return MlflowClient(tracking_uri=uri)
    with store_lock(path):
        client = MlflowClient(tracking_uri=uri)  # opens the store (cached per process)
        client.search_experiments(max_results=1)  # in case a later MLflow opens it lazily
    return client


@contextlib.contextmanager
def store_lock(db_path: Path, timeout: float = STORE_LOCK_TIMEOUT):
    """An exclusive flock on the database's directory: MLflow's schema migration is not safe to
    run from two processes at once ("index ... already exists"). The directory, not a lock file:
    nothing is left beside the store; not the database file: closing another descriptor of it
    would drop SQLite's own (POSIX) locks held by this process."""
    try:
        fd = os.open(db_path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # preflight checked the directory; a store it cannot lock is opened unlocked
        yield
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"MLflow store {db_path}: another process has been creating or "
                                    f"opening it for over {timeout:.0f} s; stop it and retry") from None
                time.sleep(0.1)
            except OSError:  # a file system without flock (some network mounts): opened unlocked
                break
        yield
    finally:
        os.close(fd)  # releases the flock


def artifact_root(uri: str) -> Path | None:
    """Where artifacts of an SQLite store live: `mlartifacts/` next to the database (also what
    `run_search.py ui` serves), not MLflow's default of ./mlruns in whatever the cwd was."""
    path = sqlite_path(uri)
    return path.parent / "mlartifacts" if path else None


def ensure_experiment(client, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created (tagged for the model-training UI) when missing.

    artifact_location: for a new experiment; by default, for an SQLite store,
    <db dir>/mlartifacts/<name> (the server's default otherwise).
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        root = artifact_root(getattr(client, "tracking_uri", "") or "")
        if artifact_location is None and root is not None:
            artifact_location = (root / _slug(name)).as_uri()
        try:
            return client.create_experiment(name, artifact_location=artifact_location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as exc:  # created concurrently by another driver
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise UserError(f"cannot create MLflow experiment {name!r}: {exc.message}") from None
    if experiment.lifecycle_stage == "deleted":
        raise UserError(deleted_message(getattr(client, "tracking_uri", ""), name, experiment.experiment_id))
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def open_experiment(uri: str, name: str):
    """(client, experiment id) of experiment `name` in the store at `uri`; both are created if missing."""
    client = client_for(uri)
    return client, ensure_experiment(client, name)


def preflight_experiment(uri: str, name: str, timeout: float = 5.0) -> None:
    """Before Ray starts: refuse a blank experiment name, or one the store holds as deleted
    (read without MLflow and without creating the store: a sqlite query or one HTTP request)."""
    if not name.strip():
        raise UserError("--mlflow-experiment is empty: give an experiment name (or leave the flag out "
                        "for the default, croptune)")
    found = _experiment_state(uri, name, timeout)
    if found is not None and found[1] == "deleted":
        raise UserError(deleted_message(uri, name, found[0]))


def deleted_message(uri: str, name: str, experiment_id: str) -> str:
    restore = shlex.join(["mlflow", "experiments", "restore", "--experiment-id", str(experiment_id)])
    return (f"MLflow experiment {name!r} (id {experiment_id}) is deleted in {uri}: restore it with "
            f"`MLFLOW_TRACKING_URI={shlex.quote(uri)} {restore}` or choose another --mlflow-experiment")


def _experiment_state(uri: str, name: str, timeout: float) -> tuple[str, str] | None:
    """(experiment id, lifecycle stage) of `name`, or None if absent or unknown here."""
    path = sqlite_path(uri)
    if path is not None:
        if not path.is_file() or path.stat().st_size == 0:
            return None
        try:  # read-only: a check writes nothing
            with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=timeout)) as db:
                rows = db.execute("SELECT experiment_id, lifecycle_stage FROM experiments WHERE name = ?",
                                  (name,)).fetchall()
        except sqlite3.Error:  # no tables yet, or a schema this query does not know: MLflow decides later
            return None
        active = [row for row in rows if row[1] != "deleted"]
        return tuple(map(str, (active or rows)[0])) if rows else None
    if uri.startswith(("http://", "https://")):
        query = urllib.parse.urlencode({"experiment_name": name})
        try:
            with api_request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout) as resp:
                experiment = json.loads(resp.read())["experiment"]
            return str(experiment["experiment_id"]), str(experiment.get("lifecycle_stage", "active"))
        except (urllib.error.URLError, OSError, KeyError, TypeError, ValueError):  # 404: no such experiment
            return None
    return None


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "experiment"
