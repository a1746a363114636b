"""`python run_search.py ui`: an MLflow server on 127.0.0.1 for the search's tracking store, and
where_to_look(), the line every command prints to say where its runs are.

It prints the URL of the experiment's model-training runs view (not the GenAI traces page an
MLflow 3 experiment otherwise opens on). `start_server`, `wait_until_up` and `stop_server`
are also what the tests use to run a real server.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse

from trainable.errors import UserError
from tuner.tracking.store import api_request, artifact_root, preflight, resolve_tracking_uri, sqlite_path

DEFAULT_PORT = 5000


def runs_url(base_url: str, experiment_id: str, run_id: str | None = None) -> str:
    """The UI page of the experiment's model-training runs view (or of one run)."""
    base = base_url.rstrip("/")
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{base}/#/experiments/{experiment_id}/{page}?workflowType=machine_learning"


def where_to_look(uri: str, experiment_id: str, run_id: str | None = None,
                  port: int = DEFAULT_PORT) -> str:
    """One line telling the user where to see the runs in the MLflow UI.

    The printed `ui` command carries --mlflow-uri unless `ui` without it, run from here, opens `uri`.
    """
    if uri.startswith(("http://", "https://")):
        return f"MLflow: {runs_url(uri, experiment_id, run_id)}"
    url = runs_url(f"http://127.0.0.1:{port}", experiment_id, run_id)
    flags = [] if uri == resolve_tracking_uri(None) else ["--mlflow-uri", uri]
    return f"MLflow: run `{shlex.join(['python', 'run_search.py', 'ui', *flags])}` then open {url}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_search.py ui",
        description="Start the MLflow UI for the search's tracking store and print its URL.",
        allow_abbrev=False)  # a typo must not silently pick another flag
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface (default %(default)s; other hosts need mlflow's --allowed-hosts)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="tracking store (default: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--mlflow-experiment", default="croptune",
                        help="experiment whose runs page to print (default %(default)s)")
    parser.add_argument("--start-timeout", type=float, default=180.0,
                        help="seconds to wait for the server to answer (default %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python run_search.py ui [--port P] [--host H] [--mlflow-uri URI] [--mlflow-experiment NAME]`."""
    args = build_parser().parse_args(argv)
    check_arguments(args)
    uri = resolve_tracking_uri(args.mlflow_uri)
    preflight(uri, requested=args.mlflow_uri)
    if uri.startswith(("http://", "https://")):
        # Already a server: nothing to start, only where to look.
        experiment_id = experiment_id_by_name(uri, args.mlflow_experiment)
        print(f"MLflow UI: {runs_url(uri, experiment_id) if experiment_id else uri}", flush=True)
        return 0
    if sqlite_path(uri) and not sqlite_path(uri).exists():
        print(f"note: {sqlite_path(uri)} does not exist yet; it will be empty until a search logs to it")
    ensure_port_free(args.host, args.port)
    url_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    base_url = f"http://{url_host}:{args.port}"
    process = start_server(uri, args.host, args.port)
    _exit_on_termination()  # kill / closed terminal: still stop the server (it has its own session)
    try:
        wait_until_up(base_url, process, args.start_timeout)
        experiment_id = experiment_id_by_name(base_url, args.mlflow_experiment)
        url = runs_url(base_url, experiment_id) if experiment_id else base_url
        print(f"MLflow UI for {uri}:\n  {url}\n(Ctrl-C to stop)", flush=True)
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_server(process)


def check_arguments(args) -> None:
    """One line for values argparse's types let through (socket.bind would raise OverflowError)."""
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be a TCP port, 1..65535 (default {DEFAULT_PORT})")
    if not args.start_timeout > 0 or args.start_timeout == float("inf"):  # NaN fails the first test
        raise UserError(f"--start-timeout {args.start_timeout:g}: must be a positive number of seconds "
                        f"(default 180)")
    if args.mlflow_uri is not None and not args.mlflow_uri.strip():
        raise UserError("--mlflow-uri is empty: give sqlite:///path/to/mlflow.db or http://host:port "
                        "(or leave the flag out for the default)")
    if not args.mlflow_experiment.strip():
        raise UserError("--mlflow-experiment is empty: give an experiment name (or leave the flag out "
                        "for the default, croptune)")


def _exit_on_termination() -> None:
    def leave(signum, frame):
        raise SystemExit(128 + signum)

    handlers = {"SIGTERM": leave, "SIGHUP": leave,
                # Ctrl-C / SIGINT stops the UI even when it was started with SIGINT ignored
                # (a shell's background job, `nohup ... &`): Python keeps an inherited SIG_IGN.
                "SIGINT": signal.default_int_handler}
    for name, handler in handlers.items():
        if hasattr(signal, name):
            try:
                signal.signal(getattr(signal, name), handler)
            except ValueError:  # not the main thread: leave the defaults
                pass


def ensure_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot serve the MLflow UI on {host}:{port} ({exc.strerror}); "
                            f"choose another --port") from None


def start_server(uri: str, host: str, port: int, log_path: str | None = None,
                 workers: int = 1) -> subprocess.Popen:
    """`mlflow server --backend-store-uri URI --host H --port P` in its own process group."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--host", host, "--port", str(port), "--workers", str(workers)]
    if artifact_root(uri) is not None:  # not ./mlartifacts in whatever directory `ui` ran from
        command += ["--artifacts-destination", str(artifact_root(uri))]
    output = open(log_path, "ab") if log_path else None  # noqa: SIM115 (owned by the child)
    try:
        # Own session: stop_server() ends mlflow's helper processes (job consumers) as well.
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT if output else None,
                                start_new_session=True)
    finally:
        if output:
            output.close()


def wait_until_up(base_url: str, process: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise UserError(f"mlflow server exited with code {process.returncode} before answering "
                            f"on {base_url}")
        try:
            with api_request(f"{base_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise UserError(f"mlflow server did not answer on {base_url} within {timeout:.0f} s")


def stop_server(process: subprocess.Popen, grace: float = 10.0) -> None:
    if process.poll() is None or _group_alive(process.pid):
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def experiment_id_by_name(base_url: str, name: str) -> str | None:
    query = urllib.parse.urlencode({"experiment_name": name})
    try:
        with api_request(f"{base_url.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}", 10) as resp:
            return json.loads(resp.read())["experiment"]["experiment_id"]
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return None
