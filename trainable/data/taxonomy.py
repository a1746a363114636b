"""The AI Challenger 2018 crop-disease taxonomy: 61 classes = 10 crops x 27 diseases x severity.

Ids follow the 2018-10-23 release (see shared/notes/aichallenger-taxonomy.md). 24 diseases come
as general/serious pairs, each crop has one healthy class, and three diseases have no severity
grade in the release: 3 (apple frogeye spot), 16 (corn dwarf mosaic virus) and 60 (tomato
mosaic virus).

Severity convention: those three no-severity diseases count as "general" (id 1). The severity
head then stays a 3-way healthy/general/serious problem and "diseased, not graded serious" is
what an ungraded disease most resembles; an extra "n/a" value would give the head a class with
only three source classes and no visual meaning of its own.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

NUM_CLASSES = 61
CROPS: tuple[str, ...] = (
    "apple", "cherry", "corn", "grape", "citrus", "peach", "pepper", "potato", "strawberry", "tomato",
)
NUM_CROPS = len(CROPS)
SEVERITIES: tuple[str, ...] = ("healthy", "general", "serious")
NO_SEVERITY_CLASSES: tuple[int, ...] = (3, 16, 60)  # graded "general" (see the module docstring)


class ClassInfo(NamedTuple):
    id: int
    crop: str       # one of CROPS
    disease: str    # "healthy" for the healthy classes
    severity: str   # one of SEVERITIES

    @property
    def crop_id(self) -> int:
        return CROPS.index(self.crop)

    @property
    def severity_id(self) -> int:
        return SEVERITIES.index(self.severity)


# (crop, [diseases in id order]); a disease name ending in "*" has no severity grade (one id),
# every other disease takes two ids (general, serious). Each crop starts with its healthy class.
_LAYOUT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("apple", ("scab", "frogeye spot*", "cedar rust")),
    ("cherry", ("powdery mildew",)),
    ("corn", ("cercospora leaf spot", "puccinia polysora", "curvularia leaf spot", "dwarf mosaic virus*")),
    ("grape", ("black rot", "black measles", "leaf blight")),
    ("citrus", ("greening",)),
    ("peach", ("bacterial spot",)),
    ("pepper", ("scab",)),
    ("potato", ("early blight", "late blight")),
    ("strawberry", ("scorch",)),
    ("tomato", ("powdery mildew", "bacterial spot", "early blight", "late blight", "leaf mold",
                "target spot", "septoria leaf spot", "spider mite", "yellow leaf curl virus",
                "mosaic virus*")),
)


def _build_classes() -> list[ClassInfo]:
    classes: list[ClassInfo] = []
    for crop, diseases in _LAYOUT:
        classes.append(ClassInfo(len(classes), crop, "healthy", "healthy"))
        for disease in diseases:
            if disease.endswith("*"):
                classes.append(ClassInfo(len(classes), crop, disease[:-1], "general"))
            else:
                classes.append(ClassInfo(len(classes), crop, disease, "general"))
                classes.append(ClassInfo(len(classes), crop, disease, "serious"))
    return classes


CLASSES: list[ClassInfo] = _build_classes()
assert len(CLASSES) == NUM_CLASSES
assert tuple(c.id for c in CLASSES if c.disease.endswith("mosaic virus") or c.disease == "frogeye spot") \
    == NO_SEVERITY_CLASSES

_CROP_OF = np.array([c.crop_id for c in CLASSES], dtype=np.int64)
_SEVERITY_OF = np.array([c.severity_id for c in CLASSES], dtype=np.int64)

# Spellings seen in public copies of the data set, mapped to CROPS names.
_CROP_ALIASES = {"maize": "corn", "orange": "citrus", "bell pepper": "pepper", "pepper bell": "pepper"}
_SEVERITY_ALIASES = {"severe": "serious", "mild": "general", "normal": "healthy", "none": "healthy"}


def _check_label(label: int) -> int:
    if isinstance(label, bool) or not isinstance(label, int | np.integer) or not 0 <= label < NUM_CLASSES:
        raise ValueError(f"label {label!r} is not a class id 0..{NUM_CLASSES - 1}")
    return int(label)


def class_info(label: int) -> ClassInfo:
    return CLASSES[_check_label(label)]


def crop_of(label: int) -> int:
    """Crop id (index into CROPS) of a 61-class label."""
    return int(_CROP_OF[_check_label(label)])


def severity_of(label: int) -> int:
    """0 healthy / 1 general / 2 serious; the no-severity diseases 3, 16, 60 give 1 (general)."""
    return int(_SEVERITY_OF[_check_label(label)])


def _lookup(table: np.ndarray, labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"labels must be integer class ids 0..{NUM_CLASSES - 1}")
    return table[labels.astype(np.int64)]


def crop_targets(labels: np.ndarray) -> np.ndarray:
    """Crop ids (int64) for an array of 61-class labels."""
    return _lookup(_CROP_OF, labels)


def severity_targets(labels: np.ndarray) -> np.ndarray:
    """Severity ids (int64, 0 healthy / 1 general / 2 serious) for an array of 61-class labels."""
    return _lookup(_SEVERITY_OF, labels)


def parse_crop(value: str) -> int:
    """A crop id from a metadata cell: an id 0..9 or a name (case-insensitive). ValueError if neither."""
    return _parse_id(value, str(value).strip().lower().replace("_", " "), "crop", CROPS, _CROP_ALIASES)


def parse_severity(value: str) -> int:
    """A severity id from a metadata cell: 0..2 or healthy/general/serious. ValueError if neither."""
    return _parse_id(value, str(value).strip().lower(), "severity", SEVERITIES, _SEVERITY_ALIASES)


def _parse_id(value: str, text: str, what: str, names, aliases: dict) -> int:
    """`text` (the normalised cell) as an id into `names`: a number below len(names), a name or an alias."""
    last = len(names) - 1
    if text.isdigit():
        if int(text) <= last:
            return int(text)
        raise ValueError(f"{what} id {int(text)} is outside 0..{last}")
    text = aliases.get(text, text)
    if text in names:
        return names.index(text)
    raise ValueError(f"{what} {value!r} is not one of {', '.join(names)} (or an id 0..{last})")
