"""Shared fixtures: every test gets its own cache dir, so nothing touches ~/.cache/croptune.

Shared helper functions live in tests/helpers.py (test modules never import from each other).
"""

import pytest


@pytest.fixture(autouse=True)
def croptune_cache(tmp_path_factory, monkeypatch):
    """$CROPTUNE_CACHE_DIR for this test (decoded-image arrays, demo datasets)."""
    cache = tmp_path_factory.mktemp("croptune-cache")
    monkeypatch.setenv("CROPTUNE_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="module")
def search_data(tmp_path_factory):
    """Tiny synthetic data in the seed layout (32 px, 2-6 train images per class) for a module's searches."""
    from trainable.data.demo.dataset import write_synthetic_dataset

    root = tmp_path_factory.mktemp("search-data")
    return write_synthetic_dataset(root / "data", seed=0, max_per_class=6, min_per_class=2, val_per_class=1,
                                   image_size=32)


@pytest.fixture
def cli_in_process(capsys):
    """run(main, argv) -> (exit code, stdout, stderr): a CLI's main() in this process, wrapped as
    its command wraps it (run_cli: a UserError becomes one `error:` line and exit code 2);
    warnings raised meanwhile are added to stderr, where the command would print them."""
    import warnings

    from trainable.errors import run_cli

    def run(main, argv):
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as caught:  # a terminal would show them on stderr
            warnings.simplefilter("always")
            code = run_cli(main, argv)
        out, err = capsys.readouterr()
        err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
        return code, out, err

    return run


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_ui(tmp_path_factory):
    """One MLflow server for the whole test session, started the way users start it
    (`run_search.py ui` -> tuner.tracking.ui.main, which runs `mlflow server --backend-store-uri sqlite:///...`
    on 127.0.0.1). Started, not yet awaited: `mlflow_server` waits for it (so a module can
    start Ray meanwhile). Tests share it: use an experiment name of your own."""
    import signal
    import socket
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    code = "import sys; from tuner.tracking.ui import main; sys.exit(main(sys.argv[1:]))"
    with open(root / "server.log", "wb") as log:
        ui = subprocess.Popen([sys.executable, "-c", code, "--port", str(port), "--mlflow-uri", uri],
                              cwd=root, stdout=subprocess.PIPE, stderr=log, text=True)
    yield {"process": ui, "port": port, "log": root / "server.log", "root": root, "uri": uri}
    ui.send_signal(signal.SIGINT)  # Ctrl-C: ui.main stops the server and its helpers
    ui.wait(timeout=30)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the MLflow server outlived `ui`"


@pytest.fixture(scope="session")
def mlflow_server(mlflow_ui):
    """The session's MLflow server once it answers: {"url", "printed" (what `ui` printed), ...}."""
    import time

    ui, lines = mlflow_ui["process"], []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and ui.poll() is None:
        line = ui.stdout.readline()
        lines.append(line)
        if line.strip().startswith("http://"):
            break
    assert ui.poll() is None, f"ui exited: {''.join(lines)} {mlflow_ui['log'].read_text()[-2000:]}"
    return {"url": f"http://127.0.0.1:{mlflow_ui['port']}", "printed": "".join(lines), **mlflow_ui}


@pytest.fixture(scope="module")
def local_ray(request):
    """A 2-CPU local Ray for a module's real Tune runs. Workers cannot import a test module by
    name: the module's functions (toy trainables) are shipped by value."""
    import ray

    ray.cloudpickle.register_pickle_by_value(request.module)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def bad_search(monkeypatch, cli_in_process):
    """run(argv, cwd) -> (exit code, stdout, stderr): run_search.py's search in this process, from
    cwd, offline, failing at once if the input gets past the checks (Ray would start next)."""
    import tuner.search  # what run_search.py runs for a search

    def got_past_the_checks(*args, **kwargs):  # fail now, not after a whole search
        raise AssertionError("bad input reached Ray")

    monkeypatch.setattr(tuner.search, "connect", got_past_the_checks)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def run(argv, cwd):
        monkeypatch.chdir(cwd)
        return cli_in_process(tuner.search.main, argv)

    return run
