"""`augmentation`: mixup / cutmix strength, probability and when they decay or switch off.

Mixup halves at mixup_decay_epoch1, quarters at mixup_decay_epoch2 and stops at
mixup_disable_epoch (in that order, by construction); cutmix stops at cutmix_disable_epoch.
An alpha or probability of 0 switches a technique off altogether.
"""

from __future__ import annotations

from search_spaces._params import Num, Offset, Space

SPACE = Space("augmentation", (
    Num("mixup_alpha", 0.0, 1.0),
    Num("mixup_prob", 0.0, 1.0),
    Num("cutmix_alpha", 0.0, 1.5),
    Num("cutmix_prob", 0.0, 1.0),
    Offset("mixup_decay_epoch1", 0.0, 0.8),
    Offset("mixup_decay_epoch2", 0.0, 0.5, after="mixup_decay_epoch1"),
    Offset("mixup_disable_epoch", 0.0, 0.6, after="mixup_decay_epoch2"),
    Offset("cutmix_disable_epoch", 0.0, 1.0),
))
