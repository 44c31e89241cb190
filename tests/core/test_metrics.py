import json

import numpy as np
import pytest

from napari_datus.core.metrics import Confusion, evaluate, hungarian


def confusion_of(pred, gt, k, c, ignore=None):
    conf = Confusion(k, c)
    conf.add(np.asarray(pred, dtype=np.uint8), np.asarray(gt), ignore)
    return conf


def test_hand_computed_k_equals_c():
    # clusters are swapped names of the classes; one pixel of class 0 predicted as cluster 0
    pred = [[1, 1, 0, 0], [1, 0, 0, 255]]
    gt = [[0, 0, 1, 1], [0, 0, 1, 1]]
    m = evaluate(confusion_of(pred, gt, 2, 2), ["a", "b"])
    assert m["mapping"] == {"0": 1, "1": 0}
    assert m["confusion"] == [[1, 3], [3, 0]]
    # class a: TP 3, FP 0, FN 1 -> IoU 3/4; class b: TP 3, FP 1, FN 0 -> IoU 3/4
    assert m["per_class_iou"] == pytest.approx([0.75, 0.75])
    assert m["pixel_accuracy"] == pytest.approx(6 / 7)
    assert m["mean_f1"] == pytest.approx(6 / 7)
    assert m["coverage"] == pytest.approx(7 / 8)
    # strict: the unlabelled class-b pixel is a miss -> b: TP 3, FP 1, FN 1 -> 3/5
    assert m["strict"]["per_class_iou"] == pytest.approx([0.75, 0.6])
    assert m["strict"]["pixel_accuracy"] == pytest.approx(6 / 8)
    assert m["unlabelled_per_class"] == [0, 1]


def test_k_greater_than_c_leaves_extra_clusters_unmatched_and_wrong():
    pred = [[0, 0, 1, 2]]
    gt = [[0, 0, 1, 1]]
    m = evaluate(confusion_of(pred, gt, 3, 2), ["a", "b"])
    assert m["mapping"]["0"] == 0
    assert sorted(v for v in m["mapping"].values() if v is not None) == [0, 1]
    assert list(m["mapping"].values()).count(None) == 1
    assert m["pixel_accuracy"] == pytest.approx(3 / 4)
    assert m["per_class_iou"] == pytest.approx([1.0, 0.5])


def test_k_less_than_c_counts_unmatched_classes_as_missed():
    pred = [[0, 0, 0, 0]]
    gt = [[0, 0, 1, 2]]
    m = evaluate(confusion_of(pred, gt, 1, 3), ["a", "b", "c"])
    assert m["mapping"] == {"0": 0}
    assert m["per_class_iou"] == pytest.approx([0.5, 0.0, 0.0])
    assert m["miou"] == pytest.approx(0.5 / 3)


def test_class_absent_from_truth_and_predictions_is_null_and_left_out():
    pred = [[0, 1]]
    gt = [[0, 1]]
    m = evaluate(confusion_of(pred, gt, 2, 3), ["a", "b", "c"])
    assert m["per_class_iou"] == [1.0, 1.0, None]
    assert m["miou"] == 1.0
    json.dumps(m, allow_nan=False)


def test_class_predicted_but_absent_from_truth_scores_zero():
    pred = [[0, 1, 1]]
    gt = [[0, 0, 0]]
    m = evaluate(confusion_of(pred, gt, 2, 2), ["a", "b"])
    # cluster 1 (two class-a pixels) takes class a; cluster 0 is left with class b
    assert m["mapping"] == {"0": 1, "1": 0}
    assert m["per_class_iou"] == pytest.approx([2 / 3, 0.0])
    assert m["miou"] == pytest.approx(1 / 3)


def test_ignore_value_is_left_out_everywhere():
    m = evaluate(confusion_of([[0, 255, 0]], [[0, 11, 11]], 1, 1, ignore=11), ["a"])
    assert m["confusion"] == [[1]] and m["unlabelled_per_class"] == [0]


def test_hungarian_maximises_total():
    mapping = hungarian(np.array([[5, 4], [4, 0]]))
    assert mapping == {0: 1, 1: 0}


def test_grow_keeps_counts():
    conf = confusion_of([[0]], [[0]], 1, 1)
    conf.grow(3)
    assert conf.matrix.tolist() == [[1, 0, 0]] and conf.unlabelled_per_class.shape == (3,)
