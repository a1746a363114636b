"""D1: the demo run itself, `python -m trainable --demo`, end to end.

The demo must be learnable but not saturated (final validation accuracy within GOAL), so that
the hyperparameters a search tunes move the result. Runs the user's command as a subprocess and
reads the final metrics from its `last.pth`; --quick trains 2 epochs (the code path, no verdict).
"""

from __future__ import annotations

import time

from bench.processes import PYTHON, finish, launch, say
from bench.profiles import Context
from bench.rows import FigureResult, fmt_s

GOAL = (50.0, 95.0)  # % validation accuracy at the end of the demo run


def run(ctx: Context) -> FigureResult:
    from trainable.train.checkpoint import load_checkpoint

    fig = FigureResult("D1", "the demo run")
    quick = ctx.mode == "quick"
    save_dir = ctx.work / "d1-demo"
    argv = [PYTHON, "-m", "trainable", "--demo", "--save-dir", str(save_dir), "--save-freq", "0"]
    if quick:
        argv += ["--epochs", "2"]
    say("D1: python -m trainable --demo")
    started = time.perf_counter()
    code = finish(launch(argv, ctx.log("d1-demo"), cwd=ctx.work / "cwd" / "d1"), timeout=3600)
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"python -m trainable --demo exited {code}; see {ctx.log('d1-demo')}")
    state = load_checkpoint(save_dir / "last.pth")
    fig.sizing = {"command": " ".join(argv[1:]), "epochs": state["epoch"]}
    fig.raw = {"val_acc": state["val_acc"], "macro_f1": state["macro_f1"], "tail_acc": state["tail_mean_acc"],
               "best_val_acc": state["best_val_acc"], "epochs": state["epoch"], "wall_s": wall,
               "per_epoch": state.get("metrics")}
    acc = float(state["val_acc"])
    fig.add(f"`python -m trainable --demo`: final val accuracy ({state['epoch']} epochs)", f"{acc:.1f} %",
            f"{GOAL[0]:.0f}-{GOAL[1]:.0f} %", None if quick else GOAL[0] <= acc <= GOAL[1],
            note=f"macro-F1 {state['macro_f1']:.3f}, tail-class acc {state['tail_mean_acc']:.1f} %"
                 + (" (--quick: 2 epochs, no verdict)" if quick else ""))
    fig.add("  its wall time (the first run on a machine also generates the demo data)", fmt_s(wall))
    return fig
