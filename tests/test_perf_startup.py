"""What keeps a search's start-up short and its processes small (bench figures P5/P6).

- the driver checks the base model in a child process: prepare_search leaves no torch or timm
  in the driver, and the first problem found is still the one reported;
- the local Ray that a search starts has no prestarted idle workers (Tune's trial actors carry
  their own runtime_env, so those workers could never run a trial);
- the dataset reaches a Ray worker without a copy (read-only views of the object store), which
  np.memmap alone does not give (it pickles its bytes in-band);
- the modules a trial worker imports do not include the driver-only ones (MLflow, Optuna, plots).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import tiny_flags

from trainable.data.demo.dataset import write_synthetic_dataset
from trainable.errors import UserError
from tuner.cli import parse_settings
from tuner.prepare import prepare_search

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("perf") / "data", seed=0, max_per_class=4,
                                   min_per_class=2, val_per_class=1, image_size=32)


def _python(code: str, cwd: Path) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_prepare_checks_the_model_outside_the_driver(dataset, tmp_path):
    argv = tiny_flags(dataset, tmp_path / "results", "perf")
    code = ("import json, sys\n"
            "from tuner.cli import parse_settings\n"
            "from tuner.prepare import prepare_search\n"
            f"prepare_search(parse_settings({argv!r}), [])\n"
            "print(json.dumps({m: m in sys.modules for m in ('torch', 'timm')}))")
    assert json.loads(_python(code, tmp_path)) == {"torch": False, "timm": False}
    assert not (tmp_path / "results").exists()  # still writes nothing


def test_model_check_errors_come_from_the_child_in_the_usual_order(dataset, tmp_path):
    argv = tiny_flags(dataset, tmp_path / "results", "perf")
    with pytest.raises(UserError, match="unknown --backbone resnet_does_not_exist"):
        prepare_search(parse_settings([*argv, "--backbone", "resnet_does_not_exist"]), [])
    # a problem the driver finds itself still wins over the model's (checked last, as before)
    bad_dir = [*argv, "--backbone", "resnet_does_not_exist", "--train-dir", str(tmp_path / "missing")]
    with pytest.raises(UserError) as caught:
        prepare_search(parse_settings(bad_dir), [])
    assert "backbone" not in str(caught.value)


def test_trial_modules_leave_out_the_driver_only_ones(tmp_path):
    code = ("import json, sys\n"
            "import trainable.tune_entry, trainable.train.loop\n"
            "print(json.dumps(sorted(m for m in ('mlflow', 'optuna', 'matplotlib', 'tensorboardX', 'tuner')"
            " if m in sys.modules)))")
    assert json.loads(_python(code, tmp_path)) == []


def test_split_images_pickle_out_of_band(dataset):
    """np.memmap pickles its bytes in-band (a private copy in each unpickling process); a Split
    hands pickle protocol 5 its images as an out-of-band buffer, which Ray shares zero-copy."""
    import pickle

    import numpy as np

    from trainable.data.dataset import load_data

    data = load_data(parse_settings(tiny_flags(dataset, Path("unused"), "perf")).base, progress=False)
    assert isinstance(data.train.images, np.memmap)
    buffers = []
    payload = pickle.dumps(data, protocol=5, buffer_callback=buffers.append)
    assert len(payload) < data.train.images.nbytes // 2
    assert sum(memoryview(b).nbytes for b in buffers) >= data.train.images.nbytes + data.val.images.nbytes
    back = pickle.loads(payload, buffers=buffers)
    assert np.array_equal(back.train.images, data.train.images) and back.train.paths == data.train.paths
    assert np.array_equal(pickle.loads(pickle.dumps(data)).val.images, data.val.images)  # plain pickle too


def _idle_workers() -> list[int]:
    from bench.processes import descendants

    idle = []
    for pid in descendants(os.getpid()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "ray::IDLE":
                idle.append(pid)
        except OSError:
            pass
    return idle


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_local_ray_has_no_idle_workers_and_shares_the_data(dataset):
    import numpy as np
    import ray

    from trainable.data.dataset import load_data
    from tuner.search import connect

    if ray.is_initialized():
        pytest.skip("a Ray session is already running in this process")
    settings = parse_settings(tiny_flags(dataset, Path("unused"), "perf"))
    assert connect(SimpleNamespace(address=None)) is True
    try:
        time.sleep(3)  # Ray prestarts its workers right after start-up, when it does
        assert _idle_workers() == []

        data = load_data(settings.base, progress=False)
        assert isinstance(data.train.images, np.memmap)  # the driver's copy is the cache file's map

        @ray.remote(num_cpus=0)
        def inspect(refs):
            bundle = ray.get(refs[0])  # what tune.with_parameters does in the trial
            images = bundle.train.images
            return {"writeable": images.flags.writeable, "owndata": images.flags.owndata,
                    "checksum": int(images[:, :4].sum())}

        seen = ray.get(inspect.remote([ray.put(data)]))
        # a copy would own its (writeable) memory; the object store hands out read-only views
        assert seen == {"writeable": False, "owndata": False, "checksum": int(data.train.images[:, :4].sum())}
    finally:
        ray.shutdown()


def test_background_imports_name_the_hooks_and_modules_that_exist(dataset, tmp_path):
    """tuner.search pre-imports, during ray.init, what the MLflow hook and Tune's TensorBoard logger
    import right after it; a renamed module would silently undo that."""
    import importlib.util

    from tuner.search import TUNE_DRIVER_IMPORTS
    from tuner.tracking.hooks import search_hooks

    settings = parse_settings(tiny_flags(dataset, tmp_path / "results", "perf"))
    hook_imports = [name for hook in search_hooks(settings) for name in hook.driver_imports]
    assert "mlflow" in hook_imports
    for name in [*TUNE_DRIVER_IMPORTS, *hook_imports]:
        assert importlib.util.find_spec(name) is not None, name
