"""What one bench run is: its mode's sizing (PROFILES), where it writes, and the Context each figure gets.

A mode (quick, default, full) is one dict with an entry per group of figures, which each figure
reads for itself: the data it trains on, image size, epochs, trials and seeds. `data` entries
describe a bench dataset (bench.datasets.bench_dataset): `fraction` of each class's demo train
images (at least one per class, so the long tail keeps its shape) and `val_per_class`
validation images; None is the whole demo data. Work files go under WORK (git-ignored), a run's
own under WORK/runs/<run id>.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuner.cli import DEMO_NUM_SAMPLES

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".work"          # logs, bench datasets, Tune experiments (git-ignored)

PROFILES: dict[str, dict] = {
    "quick": {
        "loop": {"data": {"fraction": 0.06, "val_per_class": 1}, "size": (32, 40), "epochs": 2, "aba": False},
        "input": {"images": 256, "jpeg_images": 0, "batch": 64},
        "search": {"data": {"fraction": 0.06, "val_per_class": 1}, "size": (32, 40), "trials": 3, "epochs": 3,
                   "seeds": (42,), "scaling": (2,), "verify_seeds": 2},
        "memory": {"data": {"fraction": 0.06, "val_per_class": 1}, "size": (32, 40), "trials": 4},
        "cli": {"help_runs": 3, "first_result": True, "first_result_data": {"fraction": 0.06, "val_per_class": 1},
                "e2e": "projected"},
        "cuda": {"images": 2048, "epochs": 2, "bare_steps": 20},
    },
    "default": {
        # P1 + T1: the demo recipe (48/56 px) on the whole demo data, 4 epochs, bare-Tune-bare.
        "loop": {"data": None, "size": None, "epochs": 4, "aba": True},
        "input": {"images": None, "jpeg_images": 384, "batch": 64},
        # P3 + T2 + P4: the demo search as `run_search.py --space stage_epochs --demo` runs it
        # (DEMO_NUM_SAMPLES = 12 trials of the 12-epoch demo recipe at 48/56 px on the whole demo
        # data; epochs None = the recipe's own), 3 search seeds (42 is the demo's: P4 verifies that
        # run, 3 training seeds); T2: 3 / 6 / 12 trials on seed 42 (12 is P3's run).
        "search": {"data": None, "size": None, "trials": DEMO_NUM_SAMPLES, "epochs": None,
                   "seeds": (42, 1, 2), "scaling": (3, 6, 12), "verify_seeds": 3},
        "memory": {"data": {"fraction": 0.25, "val_per_class": 4}, "size": None, "trials": 4},
        "cli": {"help_runs": 5, "first_result": True, "first_result_data": None, "e2e": "projected"},
        "cuda": {"images": 8192, "epochs": 3, "bare_steps": 60},
    },
    "full": {
        "loop": {"data": None, "size": None, "epochs": 5, "aba": True},
        "input": {"images": None, "jpeg_images": 768, "batch": 64},
        "search": {"data": None, "size": None, "trials": DEMO_NUM_SAMPLES, "epochs": None,
                   "seeds": (42, 1, 2, 3, 4), "scaling": (3, 6, 12), "verify_seeds": 3},
        "memory": {"data": None, "size": None, "trials": 4},
        "cli": {"help_runs": 5, "first_result": True, "first_result_data": None, "e2e": "real"},
        "cuda": {"images": 16384, "epochs": 4, "bare_steps": 100},
    },
}


@dataclass
class Context:
    """What every figure gets: the mode, its sizing, a work dir for this run, shared results."""
    mode: str                                   # quick | default | full
    run_id: str
    shared: dict = field(default_factory=dict)  # results one figure computes and another reuses

    @property
    def profile(self) -> dict:
        return PROFILES[self.mode]

    @property
    def work(self) -> Path:
        path = WORK / "runs" / self.run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def storage(self) -> Path:
        return self.work / "ray_results"

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def once(self, key: str, compute):
        """compute() the first time key is asked for in this run; the cached value afterwards."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]
