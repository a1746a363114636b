"""The 61-class AI Challenger 2018 taxonomy as data."""

import numpy as np
import pytest

from trainable.data import taxonomy as tx


def test_shape_of_the_taxonomy():
    assert tx.NUM_CLASSES == len(tx.CLASSES) == 61
    assert tx.NUM_CROPS == len(tx.CROPS) == 10
    assert tx.SEVERITIES == ("healthy", "general", "serious")
    assert [c.id for c in tx.CLASSES] == list(range(61))
    assert sum(c.severity == "healthy" for c in tx.CLASSES) == 10
    diseases = {(c.crop, c.disease) for c in tx.CLASSES if c.disease != "healthy"}
    assert len(diseases) == 27


@pytest.mark.parametrize("label, crop, disease, severity", [
    (0, "apple", "healthy", "healthy"), (2, "apple", "scab", "serious"), (3, "apple", "frogeye spot", "general"),
    (6, "cherry", "healthy", "healthy"), (13, "corn", "puccinia polysora", "serious"),
    (16, "corn", "dwarf mosaic virus", "general"), (21, "grape", "black measles", "serious"),
    (25, "citrus", "greening", "general"), (29, "peach", "bacterial spot", "serious"),
    (32, "pepper", "scab", "serious"), (36, "potato", "late blight", "general"),
    (40, "strawberry", "scorch", "serious"), (41, "tomato", "healthy", "healthy"),
    (45, "tomato", "bacterial spot", "serious"), (59, "tomato", "yellow leaf curl virus", "serious"),
    (60, "tomato", "mosaic virus", "general"),
])
def test_known_ids(label, crop, disease, severity):
    info = tx.class_info(label)
    assert (info.crop, info.disease, info.severity) == (crop, disease, severity)
    assert tx.crop_of(label) == tx.CROPS.index(crop)
    assert tx.severity_of(label) == tx.SEVERITIES.index(severity)


def test_crop_ranges_are_contiguous():
    expected = {"apple": (0, 5), "cherry": (6, 8), "corn": (9, 16), "grape": (17, 23), "citrus": (24, 26),
                "peach": (27, 29), "pepper": (30, 32), "potato": (33, 37), "strawberry": (38, 40),
                "tomato": (41, 60)}
    for crop, (first, last) in expected.items():
        assert [c.id for c in tx.CLASSES if c.crop == crop] == list(range(first, last + 1))


def test_no_severity_diseases_count_as_general():
    assert tx.NO_SEVERITY_CLASSES == (3, 16, 60)
    assert all(tx.severity_of(label) == 1 for label in tx.NO_SEVERITY_CLASSES)
    # every other disease comes as a general/serious pair on consecutive ids
    graded = [c for c in tx.CLASSES if c.severity != "healthy" and c.id not in tx.NO_SEVERITY_CLASSES]
    assert len(graded) == 48
    for info in graded:
        partner = info.id + 1 if info.severity == "general" else info.id - 1
        assert tx.CLASSES[partner].disease == info.disease and tx.CLASSES[partner].severity != info.severity


def test_vectorised_targets():
    labels = np.array([0, 3, 5, 16, 60, 59, 41])
    np.testing.assert_array_equal(tx.crop_targets(labels), [0, 0, 0, 2, 9, 9, 9])
    np.testing.assert_array_equal(tx.severity_targets(labels), [0, 1, 2, 1, 1, 2, 0])
    assert tx.crop_targets(labels).dtype == np.int64 and tx.severity_targets(labels).dtype == np.int64
    assert tx.crop_targets(np.zeros(0, dtype=np.int64)).shape == (0,)
    with pytest.raises(ValueError):
        tx.crop_targets(np.array([61]))
    with pytest.raises(ValueError):
        tx.severity_targets(np.array([-1]))
    with pytest.raises(ValueError):
        tx.crop_of(61)


def test_parse_crop_and_severity():
    assert tx.parse_crop("Tomato") == 9 and tx.parse_crop("3") == 3 and tx.parse_crop("maize") == 2
    assert tx.parse_severity("Serious") == 2 and tx.parse_severity("0") == 0 and tx.parse_severity("severe") == 2
    for bad in ("banana", "10"):
        with pytest.raises(ValueError):
            tx.parse_crop(bad)
    for bad in ("critical", "3"):
        with pytest.raises(ValueError):
            tx.parse_severity(bad)
