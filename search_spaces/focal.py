"""`focal`: focal loss on the tail classes: gamma, what counts as tail, and from when."""

from __future__ import annotations

from search_spaces._params import Num, Space
from search_spaces.stage_epochs import TAIL_FOCAL

GAMMA = Num("focal_gamma", 0.0, 4.0)
TAIL_FRACTION = Num("tail_fraction", 0.05, 0.5)

SPACE = Space("focal", (GAMMA, TAIL_FRACTION, TAIL_FOCAL))
