"""Hand-computed checks of promptcl.metrics.

Every expected value below is worked out by hand in the comments (A[i, t] = accuracy on task i
after training task t, 0-based; NaN below the diagonal = tasks not yet seen).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from promptcl import metrics as m

nan = float("nan")

# --- T = 1 ----------------------------------------------------------------------------------
A1 = [[87.5]]

# --- T = 3: forgetting on task 0, task 1 *rises* after it was learned (60 -> 75) ---------------
A3 = [
    [80.0, 90.0, 70.0],
    [nan, 60.0, 75.0],
    [nan, nan, 85.0],
]
SIZES3 = [100, 50, 50]

# --- T = 4: vCLIMB-style uneven tasks (11 + 9 + 9 + 9 classes), uneven test sets ---------------
A4 = [
    [90.0, 85.0, 80.0, 74.0],
    [nan, 80.0, 70.0, 60.0],
    [nan, nan, 75.0, 65.0],
    [nan, nan, nan, 85.0],
]
CLASSES4 = [11, 9, 9, 9]
SIZES4 = [110, 90, 95, 80]


# ---------------------------------------------------------------------------------------------
# T = 1
# ---------------------------------------------------------------------------------------------


def test_single_task():
    assert m.faa(A1) == pytest.approx(87.5)
    assert m.caa(A1) == pytest.approx(87.5)
    assert m.average_accuracies(A1) == pytest.approx([87.5])
    # nothing to forget or transfer with one task
    assert m.forgetting(A1) == 0.0
    assert m.forgetting(A1, include_final=True) == 0.0
    assert m.coda_forgetting(A1) == 0.0
    assert m.backward_transfer(A1) == 0.0
    assert m.vclimb_accuracy(A1, [10]) == pytest.approx(87.5)
    assert m.vclimb_bwf(A1, [10]) == 0.0
    assert m.sample_weighted_accuracy(A1, [50]) == pytest.approx(87.5)
    old, new = m.old_new_accuracy(A1, [50])
    assert math.isnan(old)
    assert new == pytest.approx(87.5)


# ---------------------------------------------------------------------------------------------
# T = 3
# ---------------------------------------------------------------------------------------------


def test_accuracies_3x3():
    # final column 70, 75, 85 -> (70 + 75 + 85) / 3 = 230 / 3
    assert m.faa(A3) == pytest.approx(230 / 3)
    # a_0 = 80; a_1 = (90 + 60) / 2 = 75; a_2 = 230 / 3
    assert m.average_accuracies(A3) == pytest.approx([80.0, 75.0, 230 / 3])
    # (80 + 75 + 230/3) / 3 = (240/3 + 225/3 + 230/3) / 3 = 695 / 9
    assert m.caa(A3) == pytest.approx(695 / 9)


def test_forgetting_3x3_fm_and_hide_differ():
    # FM: task 0: max(80, 90) - 70 = 20; task 1: max(60) - 75 = -15 -> (20 - 15) / 2 = 2.5
    assert m.forgetting(A3) == pytest.approx(2.5)
    # HiDe (final inside max): task 0: max(80, 90, 70) - 70 = 20; task 1: max(60, 75) - 75 = 0
    # -> (20 + 0) / 2 = 10
    assert m.forgetting(A3, include_final=True) == pytest.approx(10.0)


def test_coda_forgetting_3x3():
    # step 2 (t=1): (A[0,0] - A[0,1]) / 1 = 80 - 90 = -10
    # step 3 (t=2): ((A[0,1] - A[0,2]) + (A[1,1] - A[1,2])) / 2 = ((90-70) + (60-75)) / 2 = 2.5
    # F = (-10 + 2.5) / 2 = -3.75
    assert m.coda_forgetting(A3) == pytest.approx(-3.75)


def test_bwt_3x3():
    # ((70 - 80) + (75 - 60)) / 2 = (-10 + 15) / 2 = 2.5
    assert m.backward_transfer(A3) == pytest.approx(2.5)


def test_vclimb_3x3_equal_classes():
    # equal class counts -> Acc = task-balanced mean of final column = 230 / 3
    assert m.vclimb_accuracy(A3, [10, 10, 10]) == pytest.approx(230 / 3)
    # BWF = ((80 - 70) + (60 - 75)) / 2 = -2.5 (= -BWT with equal weights)
    assert m.vclimb_bwf(A3, [10, 10, 10]) == pytest.approx(-2.5)


def test_sample_weighted_3x3():
    # t=0: 80; t=1: (100*90 + 50*60) / 150 = 12000 / 150 = 80
    # t=2: (100*70 + 50*75 + 50*85) / 200 = (7000 + 3750 + 4250) / 200 = 75
    assert m.sample_weighted_accuracies(A3, SIZES3) == pytest.approx([80.0, 80.0, 75.0])
    assert m.sample_weighted_accuracy(A3, SIZES3) == pytest.approx(75.0)


def test_old_new_3x3():
    # last step: old = (100*70 + 50*75) / 150 = 10750 / 150; new = A[2,2] = 85
    old, new = m.old_new_accuracy(A3, SIZES3)
    assert old == pytest.approx(10750 / 150)
    assert new == pytest.approx(85.0)
    # t=1: old = A[0,1] = 90; new = A[1,1] = 60
    assert m.old_new_accuracy(A3, SIZES3, t=1) == pytest.approx((90.0, 60.0))
    # t=-1 is the last step
    assert m.old_new_accuracy(A3, SIZES3, t=-1) == pytest.approx((10750 / 150, 85.0))
    # t=0: no old tasks
    old0, new0 = m.old_new_accuracy(A3, SIZES3, t=0)
    assert math.isnan(old0)
    assert new0 == pytest.approx(80.0)


# ---------------------------------------------------------------------------------------------
# T = 4, uneven tasks
# ---------------------------------------------------------------------------------------------


def test_accuracies_4_tasks():
    # final column 74, 60, 65, 85 -> 284 / 4 = 71
    assert m.faa(A4) == pytest.approx(71.0)
    # a_0 = 90; a_1 = (85 + 80)/2 = 82.5; a_2 = (80 + 70 + 75)/3 = 75; a_3 = 71
    assert m.average_accuracies(A4) == pytest.approx([90.0, 82.5, 75.0, 71.0])
    # (90 + 82.5 + 75 + 71) / 4 = 318.5 / 4
    assert m.caa(A4) == pytest.approx(79.625)


def test_forgetting_4_tasks():
    # task 0: max(90, 85, 80) - 74 = 16; task 1: max(80, 70) - 60 = 20; task 2: 75 - 65 = 10
    # -> 46 / 3; all terms >= 0 so HiDe's clipped version agrees
    assert m.forgetting(A4) == pytest.approx(46 / 3)
    assert m.forgetting(A4, include_final=True) == pytest.approx(46 / 3)


def test_coda_forgetting_4_tasks():
    # t=1: (90 - 85) / 1 = 5
    # t=2: ((85 - 80) + (80 - 70)) / 2 = 7.5
    # t=3: ((80 - 74) + (70 - 60) + (75 - 65)) / 3 = 26 / 3
    # F = (5 + 7.5 + 26/3) / 3 = (30/6 + 45/6 + 52/6) / 3 = 127 / 18
    assert m.coda_forgetting(A4) == pytest.approx(127 / 18)


def test_bwt_4_tasks():
    # ((74 - 90) + (60 - 80) + (65 - 75)) / 3 = -46 / 3
    assert m.backward_transfer(A4) == pytest.approx(-46 / 3)


def test_vclimb_4_tasks_class_weighted():
    # Acc: (11*74 + 9*60 + 9*65 + 9*85) / 38 = (814 + 540 + 585 + 765) / 38 = 2704 / 38
    acc = m.vclimb_accuracy(A4, CLASSES4)
    assert acc == pytest.approx(2704 / 38)
    assert acc != pytest.approx(m.faa(A4))  # 71.158 vs task-balanced 71.0
    # BWF: (11*(90-74) + 9*(80-60) + 9*(75-65)) / 29 = (176 + 180 + 90) / 29 = 446 / 29
    # (unweighted would be 46 / 3 = 15.33)
    assert m.vclimb_bwf(A4, CLASSES4) == pytest.approx(446 / 29)


def test_vclimb_per_step_4_tasks():
    # t=0: 90; t=1: (11*85 + 9*80) / 20 = 1655 / 20
    # t=2: (11*80 + 9*70 + 9*75) / 29 = (880 + 630 + 675) / 29 = 2185 / 29; t=3: 2704 / 38
    assert m.vclimb_accuracies(A4, CLASSES4) == pytest.approx(
        [90.0, 1655 / 20, 2185 / 29, 2704 / 38]
    )
    # t=0: 0; t=1: 11*(90-85) / 11 = 5; t=2: (11*(90-80) + 9*(80-70)) / 20 = 200 / 20 = 10
    # t=3: 446 / 29
    assert m.vclimb_bwfs(A4, CLASSES4) == pytest.approx([0.0, 5.0, 10.0, 446 / 29])


def test_sample_weighted_4_tasks():
    # final: (110*74 + 90*60 + 95*65 + 80*85) / 375 = (8140 + 5400 + 6175 + 6800) / 375
    #      = 26515 / 375 = 70.7067 (task-balanced 71.0, class-weighted 71.158)
    acc = m.sample_weighted_accuracy(A4, SIZES4)
    assert acc == pytest.approx(26515 / 375)
    assert acc != pytest.approx(m.faa(A4))
    # t=0: 90; t=1: (110*85 + 90*80) / 200 = 16550 / 200
    # t=2: (110*80 + 90*70 + 95*75) / 295 = (8800 + 6300 + 7125) / 295 = 22225 / 295
    assert m.sample_weighted_accuracies(A4, SIZES4) == pytest.approx(
        [90.0, 16550 / 200, 22225 / 295, 26515 / 375]
    )


def test_old_new_4_tasks():
    # old = (110*74 + 90*60 + 95*65) / 295 = 19715 / 295; new = 85
    assert m.old_new_accuracy(A4, SIZES4) == pytest.approx((19715 / 295, 85.0))
    # t=1: old = A[0,1] = 85; new = A[1,1] = 80
    assert m.old_new_accuracy(A4, SIZES4, t=1) == pytest.approx((85.0, 80.0))


def test_summary_4_tasks():
    s = m.summary(A4, test_sizes=SIZES4, classes_per_task=CLASSES4)
    expected = {
        "faa": 71.0,
        "caa": 79.625,
        "fm": 46 / 3,
        "coda_fn": 127 / 18,
        "bwt": -46 / 3,
        "sample_acc": 26515 / 375,
        "old_acc": 19715 / 295,
        "new_acc": 85.0,
        "vclimb_acc": 2704 / 38,
        "vclimb_bwf": 446 / 29,
    }
    assert set(s) == set(expected)
    for key, value in expected.items():
        assert type(s[key]) is float, key
        assert s[key] == pytest.approx(value), key
    json.dumps(s)


def test_summary_optional_keys():
    base = {"faa", "caa", "fm", "coda_fn", "bwt"}
    assert set(m.summary(A3)) == base
    assert set(m.summary(A3, classes_per_task=[10, 10, 10])) == base | {"vclimb_acc", "vclimb_bwf"}


def test_summary_single_task_nan_old_acc():
    s = m.summary(A1, test_sizes=[50], classes_per_task=[10])
    assert math.isnan(s["old_acc"])
    assert s["new_acc"] == pytest.approx(87.5)
    assert s["fm"] == 0.0 and s["coda_fn"] == 0.0 and s["bwt"] == 0.0 and s["vclimb_bwf"] == 0.0
    json.dumps(s)  # NaN is allowed by the default encoder


# ---------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------


def test_unseen_entries_are_ignored():
    # below the diagonal (i > t): NaN, HiDe-style zeros, or garbage must not change anything
    zeros = np.nan_to_num(np.array(A4), nan=0.0)
    garbage = np.where(np.isnan(np.array(A4)), 1e6, np.array(A4))
    for variant in (zeros, garbage):
        assert m.summary(variant, SIZES4, CLASSES4) == pytest.approx(
            m.summary(A4, SIZES4, CLASSES4)
        )
        assert m.forgetting(variant, include_final=True) == pytest.approx(46 / 3)


def test_check_matrix_returns_copy_with_nan_below_diagonal():
    src = np.nan_to_num(np.array(A3), nan=0.0)
    out = m.check_matrix(src)
    assert out.dtype == np.float64
    assert np.isnan(out[1, 0]) and np.isnan(out[2, 0]) and np.isnan(out[2, 1])
    assert out[0, 1] == 90.0
    assert src[1, 0] == 0.0  # input untouched


def test_nan_on_diagonal_raises():
    bad = np.array(A3)
    bad[1, 1] = nan
    with pytest.raises(ValueError, match=r"non-finite.*A\[1, 1\]"):
        m.faa(bad)


def test_inf_above_diagonal_raises():
    bad = np.array(A4)
    bad[0, 2] = np.inf
    with pytest.raises(ValueError, match=r"A\[0, 2\]"):
        m.check_matrix(bad)


def test_non_square_raises():
    with pytest.raises(ValueError, match="square"):
        m.faa([[1.0, 2.0, 3.0], [nan, 4.0, 5.0]])


def test_not_2d_raises():
    with pytest.raises(ValueError, match="2-D"):
        m.faa([1.0, 2.0])


def test_empty_raises():
    with pytest.raises(ValueError, match="empty"):
        m.faa(np.zeros((0, 0)))


def test_bad_weights_raise():
    with pytest.raises(ValueError, match="test_sizes.*one entry per task"):
        m.sample_weighted_accuracy(A3, [100, 50])
    with pytest.raises(ValueError, match="positive"):
        m.sample_weighted_accuracy(A3, [100, 0, 50])
    with pytest.raises(ValueError, match="classes_per_task"):
        m.vclimb_accuracy(A4, [11, 9, 9])


def test_old_new_step_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        m.old_new_accuracy(A3, SIZES3, t=3)
