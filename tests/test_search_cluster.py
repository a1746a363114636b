"""`run_search.py --address HOST:PORT` runs the search on an existing Ray cluster.

The test starts its own head node (`ray start --head --block` in a new process group, with
a throwaway auth token) and stops exactly that node afterwards: SIGTERM to its `ray start`
process drains and shuts down the node's processes. (`ray stop` would stop every Ray
instance on the machine, including other test sessions'.)
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from trainable.data.demo.dataset import layout_paths, write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def head_node(tmp_path):
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    # Its own (short: socket paths) temp dir, so the node's `ray_current_cluster` address file
    # does not land in /tmp/ray, where every later plain ray.init() on the machine would follow it.
    temp_dir = tempfile.mkdtemp(prefix="ctray", dir="/tmp")
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                             "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
                             "--temp-dir", temp_dir, "--block"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in (tmp_path / "head.log").read_text():
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            assert time.time() < deadline, "ray start --head did not come up"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", env
    finally:
        if head.poll() is None:
            head.send_signal(signal.SIGTERM)
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)  # the group we created: only this node
                head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_search_runs_on_an_existing_cluster(head_node, tmp_path):
    address, env = head_node
    root = write_synthetic_dataset(tmp_path / "data", seed=0, max_per_class=6, min_per_class=2, val_per_class=1,
                                   image_size=32)
    storage = tmp_path / "results"
    flags = []
    for key, value in layout_paths(root).items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    flags += ["--backbone", "test_resnet", "--no-pretrained", "--image-size", "32", "--progressive-image-size", "40",
              "--batch-size", "32", "--epochs", "2", "--num-workers", "0", "--device", "cpu", "--space", "optim",
              "--num-samples", "2", "--storage-path", str(storage), "--name", "cluster", "--address", address,
              "--no-mlflow"]  # tracking is tested in test_tracking*.py
    env = {**env, "CROPTUNE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(REPO / "run_search.py"), *flags], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=400)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "Connected to Ray cluster" in proc.stderr + proc.stdout
    assert f"on {address}" in proc.stdout  # the resource plan names the cluster it runs on
    summary = json.loads((storage / "cluster" / "search_summary.json").read_text())
    assert summary["num_trials"] == 2 and summary["num_failed"] == 0 and summary["best_trial_id"]
