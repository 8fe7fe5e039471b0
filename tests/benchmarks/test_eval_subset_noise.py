"""benchmarks/eval_subset_noise.py's comparison of subset and whole-split losses."""

import numpy as np
import pytest

from benchmarks import eval_subset_noise


def test_compare_measures_offsets_changes_and_the_pick_of_the_best_evaluation():
    # 4 rows of 10 tokens at 3 evaluations; whole-split losses 2.0, 1.0, 1.5 (the best is the second)
    losses = np.array([[10, 30, 20, 20], [0, 20, 10, 10], [5, 25, 15, 15]], dtype=float)
    counts = np.full(4, 10)
    compare = eval_subset_noise.compare
    exact = compare(losses, counts, [[0, 1, 2, 3]])
    assert exact["offset_mean_abs"] == exact["change_error_mean_abs"] == exact["regret_mean"] == 0
    assert exact["same_sign"] == exact["same_best"] == 1
    # row 1 alone: losses 3.0, 2.0, 2.5 -> a constant offset of +1, changes exact
    offset_only = compare(losses, counts, [[1]])
    assert offset_only["offset_mean_abs"] == pytest.approx(1.0) and offset_only["change_error_mean_abs"] == 0
    # two subsets: row 2 alone is the whole split's 2.0, 1.0, 1.5; row 0 alone is 1.0, 0.0, 0.5
    assert compare(losses, counts, [[2], [0]])["offset_mean_abs"] == pytest.approx(0.5)
    # a subset whose losses fall where the whole split's rise picks another evaluation and pays for it
    misleading = np.array([[10, 30, 20, 20], [0, 20, 10, 10], [5, 25, 15, 0]], dtype=float)  # whole: 2, 1, 1.125
    figures = compare(misleading, counts, [[3]])  # row 3: 2, 1, 0
    assert figures["same_best"] == 0 and figures["regret_mean"] == pytest.approx(0.125)
    assert figures["same_sign"] == 0.5 and figures["change_error_mean_abs"] == pytest.approx(1.125 / 2)
