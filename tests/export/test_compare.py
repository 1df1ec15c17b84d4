"""The export comparator (``gcnet_d2.export.compare``): ``InstancesDiff.ok`` is the verdict of
every detector export check (tests and ``tools/export_model.py``), so each field that differs
beyond its tolerance must turn it false, and changes within tolerance must not."""

from __future__ import annotations

import pytest
import torch
from detectron2.structures import Boxes, Instances

from gcnet_d2.export import compare
from gcnet_d2.export.compare import compare_instances

HEIGHT, WIDTH = 120, 200  # box tolerance in pixels: BOX_TOL * 200


def detections(masks: bool = True) -> Instances:
    """Four detections, scores descending, two of class 1 (one box apart from the other)."""
    inst = Instances((HEIGHT, WIDTH))
    inst.pred_boxes = Boxes(
        torch.tensor(
            [[10.0, 12.0, 80.0, 90.0], [100.0, 20.0, 180.0, 110.0], [30.0, 40.0, 60.0, 70.0]]
            + [[5.0, 5.0, 50.0, 40.0]]
        )
    )
    inst.scores = torch.tensor([0.98, 0.9, 0.6, 0.3])
    inst.pred_classes = torch.tensor([1, 0, 1, 2])
    if masks:
        inst.pred_masks = torch.linspace(0.0, 1.0, 4 * 7 * 7).reshape(4, 1, 7, 7)
    return inst


def changed(field: str, index: int, delta: float) -> Instances:
    """:func:`detections` with ``delta`` added to one value of ``field`` at detection
    ``index``."""
    inst = detections()
    if field == "box":
        inst.pred_boxes.tensor[index, 2] += delta
    elif field == "score":
        inst.scores[index] += delta
    elif field == "mask":
        inst.pred_masks[index, 0, 3, 4] += delta
    return inst


def test_equal_detections_are_ok():
    diff = compare_instances(detections(), detections())
    assert diff.ok, diff.summary()
    assert (diff.box, diff.score, diff.mask) == (0.0, 0.0, 0.0)
    assert diff.classes_equal and diff.count_expected == diff.count_got == 4


def test_without_masks_only_boxes_scores_classes_count():
    diff = compare_instances(detections(masks=False), detections(masks=False))
    assert diff.ok and diff.mask == 0.0


@pytest.mark.parametrize(
    "field,tol",
    [("box", compare.BOX_TOL * WIDTH), ("score", compare.SCORE_TOL), ("mask", compare.MASK_TOL)],
)
def test_a_change_within_tolerance_is_ok(field, tol):
    diff = compare_instances(detections(), changed(field, 1, 0.5 * tol))
    assert diff.ok, diff.summary()
    assert getattr(diff, field) > 0  # the change was seen, and is within tolerance


@pytest.mark.parametrize(
    "field,tol",
    [("box", compare.BOX_TOL * WIDTH), ("score", compare.SCORE_TOL), ("mask", compare.MASK_TOL)],
)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_change_beyond_tolerance_fails(field, tol, sign):
    """Only ``field`` differs (by twice its tolerance), and that alone fails the verdict."""
    diff = compare_instances(detections(), changed(field, 2, 2.0 * sign * tol))
    assert not diff.ok, diff.summary()
    scale = WIDTH if field == "box" else 1.0
    assert getattr(diff, field) == pytest.approx(2.0 * tol / scale, rel=1e-3)
    others = {"box": compare.BOX_TOL, "score": compare.SCORE_TOL, "mask": compare.MASK_TOL}
    del others[field]
    assert all(getattr(diff, name) <= tol for name, tol in others.items())
    assert diff.classes_equal and diff.count_expected == diff.count_got


def test_a_box_change_is_measured_against_the_longer_side():
    """A shift of 0.15 px is 7.5e-4 of a 200 px side (ok) but 1.5e-3 of a 100 px one."""
    small = detections()
    small.pred_boxes.tensor /= 2
    small = Instances((HEIGHT // 2, WIDTH // 2), **small.get_fields())
    shifted = Instances(small.image_size, **{k: v.clone() for k, v in small.get_fields().items()})
    shifted.pred_boxes.tensor[0, 0] += 0.15
    assert compare_instances(detections(), changed("box", 0, 0.15)).ok
    assert not compare_instances(small, shifted).ok


@pytest.mark.parametrize("drop", [0, 3])
def test_a_missing_or_extra_detection_fails(drop):
    fewer = detections()[[i for i in range(4) if i != drop]]
    for expected, got in ((detections(), fewer), (fewer, detections())):
        diff = compare_instances(expected, got)
        assert not diff.ok and diff.count_expected != diff.count_got
        assert "detections where eager has" in diff.summary()


def test_a_changed_class_fails():
    """Detection 3 (the only class 2) comes out as class 0: no partner of its class."""
    got = detections()
    got.pred_classes[3] = 0
    diff = compare_instances(detections(), got)
    assert not diff.ok and not diff.classes_equal
    assert "DIFFER" in diff.summary()


def test_swapped_classes_of_equal_boxes_fail():
    """Two classes exchanged between detections: counts and per-class partners exist, but
    each is paired with the other's box."""
    got = detections()
    got.pred_classes[0], got.pred_classes[1] = 0, 1
    assert not compare_instances(detections(), got).ok


def test_a_reordered_list_is_paired_not_compared_by_position():
    """Equal scores may come out in another order in another runtime (a saturated softmax):
    the same detections in another order are equal."""
    order = [1, 0, 3, 2]
    diff = compare_instances(detections(), detections()[order])
    assert diff.ok, diff.summary()
    assert diff.box == 0.0 and diff.score == 0.0 and diff.mask == 0.0


EQUAL = dict(count_expected=4, count_got=4, classes_equal=True, box=0.0, box_px=0.0)


@pytest.mark.parametrize(
    "change",
    [
        {"count_got": 3},
        {"classes_equal": False},
        {"box": compare.BOX_TOL * 1.01},
        {"score": compare.SCORE_TOL * 1.01},
        {"mask": compare.MASK_TOL * 1.01},
    ],
    ids=["count", "class", "box", "score", "mask"],
)
def test_each_field_alone_turns_the_verdict_false(change):
    """``InstancesDiff.ok`` itself, one field at a time (``compare_instances`` also sets the
    other fields to ``inf`` on a count or class difference, which would hide a missing check)."""
    fields = {**EQUAL, "score": 0.0, "mask": 0.0}
    assert compare.InstancesDiff(**fields).ok
    at_tolerance = {"box": compare.BOX_TOL, "score": compare.SCORE_TOL, "mask": compare.MASK_TOL}
    assert compare.InstancesDiff(**{**fields, **at_tolerance}).ok
    assert not compare.InstancesDiff(**{**fields, **change}).ok
