"""`optim`: learning rate (log, a decade either side of the base), weight decay (log),
dropout, initial label smoothing and the weight EMA (on/off, and its decay when on)."""

from __future__ import annotations

from search_spaces._params import Cat, Num, Space
from trainable.config import TrainConfig


# Module-level (not lambdas): Ray pickles the searcher, space included, with plain pickle.
def lr_low(base: TrainConfig) -> float:
    return base.lr / 10


def lr_high(base: TrainConfig) -> float:
    return base.lr * 10


SPACE = Space("optim", (
    Num("lr", lr_low, lr_high, log=True),
    Num("weight_decay", 1e-6, 1e-1, log=True),
    Num("dropout", 0.0, 0.6),
    Num("label_smoothing", 0.0, 0.2),
    Cat("use_ema", (False, True)),
    Num("ema_decay", 0.99, 0.9999, when="use_ema"),
))
