"""`stage_epochs`: when each switch of the staged recipe happens.

Main chain (each after the previous): stage 2 < stage 3 <= LR restart <= progressive resize
<= final clean phase. Side switches hang off it: label-smoothing decays after stage 2 (the
seed's fall between stages 2 and 3; the demo's stage 3 comes too early for that), the second
after the first, center/cosine phase after stage 3, sampler-off
and tail-focal anywhere in the run. Every value is a fraction of the span its anchors leave,
so samples scale to --epochs and are always in a valid order. The seed's 50-epoch timeline
sits well inside every range.
"""

from __future__ import annotations

from search_spaces._params import Offset, Space

STAGE2 = Offset("stage2_epoch", 0.0, 0.5, reserve=1)  # 0: no head-only stage (from scratch); room for stage 3
STAGE3 = Offset("stage3_epoch", 0.0, 0.6, after="stage2_epoch", strict=True)
LR_RESTART = Offset("lr_restart_epoch", 0.0, 0.8, after="stage3_epoch")
PROGRESSIVE_RESIZE = Offset("progressive_resize_epoch", 0.0, 1.0, after="lr_restart_epoch")
FINAL_CLEAN = Offset("final_clean_epoch", 0.0, 1.0, after="progressive_resize_epoch")
CENTER_UPDATE = Offset("center_update_epoch", 0.0, 1.0, after="stage3_epoch")
SMOOTHING_DECAY1 = Offset("smoothing_decay_epoch1", 0.0, 1.0, after="stage2_epoch")
SMOOTHING_DECAY2 = Offset("smoothing_decay_epoch2", 0.0, 1.0, after="smoothing_decay_epoch1")
DISABLE_SAMPLER = Offset("disable_sampler_epoch", 0.0, 1.0)
TAIL_FOCAL = Offset("tail_focal_epoch", 0.0, 1.0)  # shared with the `focal` space

SPACE = Space("stage_epochs", (
    STAGE2, STAGE3, LR_RESTART, PROGRESSIVE_RESIZE, FINAL_CLEAN, CENTER_UPDATE,
    SMOOTHING_DECAY1, SMOOTHING_DECAY2, DISABLE_SAMPLER, TAIL_FOCAL,
))
