"""`full`: every built-in space at once (tail_focal_epoch is shared by stage_epochs and focal
and sampled once)."""

from __future__ import annotations

from search_spaces import augmentation, focal, optim, stage_epochs
from search_spaces._params import merge

SPACE = merge("full", [stage_epochs.SPACE, augmentation.SPACE, focal.SPACE, optim.SPACE])
