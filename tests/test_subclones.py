"""CNV subclone calling (helpers.analysis.subclones): arm mapping of infercnvpy windows, the detectability rule,
and the caller on planted 1-3 clone structures (arm-level scores with noise like infercnvpy's), including
structures it must not split."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.analysis import subclones


def _arms(rng, sizes, shifts, n_arms=30, noise=1.0, skew=False):
    """Cells x arms: one block per clone of ``sizes`` cells, clone k shifted by ``shifts[k]`` ({arm: shift in noise
    SD}); noise Gaussian, or skewed (a gamma, like a cell-level amplitude) when ``skew``."""
    blocks = []
    for n, sh in zip(sizes, shifts):
        e = rng.gamma(2.0, 1.0, (n, n_arms)) - 2.0 if skew else rng.normal(0, noise, (n, n_arms))
        for arm, d in sh.items():
            e[:, arm] += d
        blocks.append(e)
    return np.vstack(blocks)


def test_window_arms_follow_infercnvpy_windows_and_centromeres():
    # chr1: 30 genes at 1..30 Mb, centromere at 15.5 Mb; chr2: 5 genes (fewer than a window: one window)
    var = pd.DataFrame({"chromosome": ["chr1"] * 30 + ["chr2"] * 5,
                        "start": np.r_[np.arange(1, 31), np.arange(1, 6)] * 1e6})
    cen = pd.Series({"chr1": 15.5, "chr2": 2.5})
    arms = subclones.window_arms(var, {"chr1": 0, "chr2": 3}, 4, cen, window_size=10, step=10)
    # chr1 windows start at genes 0, 10, 20; their middle genes sit at 6, 16, 26 Mb; chr2's one window: its
    # middle gene (clipped to the last) at 5 Mb
    assert arms.tolist() == ["1p", "1q", "1q", "2q"]
    with pytest.raises(ValueError, match="chr1: 4 CNV windows"):
        subclones.window_arms(var, {"chr1": 0, "chr2": 4}, 5, cen, window_size=10, step=10)


def test_arm_scores_average_windows_and_drop_short_arms():
    X = np.arange(12, dtype=float).reshape(2, 6)
    arms = np.array(["1p", "1p", "1q", "1q", "1q", "2p"])
    A = subclones.arm_scores(X, arms, min_windows=2)
    assert list(A.columns) == ["1p", "1q"]
    assert A.to_numpy().tolist() == [[0.5, 3.0], [6.5, 9.0]]


def test_detectability_rule():
    two = [["1q_gain"], ["1q_gain", "13_loss", "6q_loss"]]
    assert subclones.meets_detectability_rule(two, np.r_[[0] * 30, [1] * 30])
    assert not subclones.meets_detectability_rule(two, np.r_[[0] * 30, [1] * 29])  # a clone under 30 cells
    assert not subclones.meets_detectability_rule([["1q_gain"], ["1q_gain", "13_loss"]], np.r_[[0] * 50, [1] * 50])
    # siblings: each differs from the trunk by 2, from each other by 4
    three = [["a"], ["a", "b", "c"], ["a", "d", "e"]]
    assert subclones.meets_detectability_rule(three, np.r_[[0] * 40, [1] * 40, [2] * 40, [-1] * 5])


@pytest.mark.parametrize("skew", [False, True])
def test_one_clone_is_not_split(skew):
    for seed in range(5):
        rng = np.random.default_rng(seed)
        Z = _arms(rng, [400], [{}], skew=skew)
        assert subclones.call_subclones(Z, seed=0).max() == 0, seed


def test_planted_two_and_three_clones_are_found():
    rng = np.random.default_rng(7)
    # two clones, differing by 2 arm events of 3 noise SD (weaker than infercnvpy's larger arms on simulated data)
    Z2 = _arms(rng, [250, 150], [{}, {3: -3.0, 11: -3.0}])
    lab = subclones.call_subclones(Z2, seed=0)
    assert lab.max() == 1
    truth = np.r_[[0] * 250, [1] * 150]
    assert max((lab == truth).mean(), (lab != truth).mean()) > 0.95  # cells go to their clone
    # three clones: trunk and two siblings with their own events
    Z3 = _arms(rng, [200, 150, 100], [{}, {3: -3.0, 11: 3.0}, {5: -3.0, 20: -3.0, 21: 3.0}])
    assert subclones.call_subclones(Z3, seed=0).max() == 2


def test_clones_below_the_minimum_size_are_not_called():
    rng = np.random.default_rng(3)
    Z = _arms(rng, [300, 20], [{}, {3: -5.0, 11: -5.0}])  # a clear 20-cell clone: under min_cells = 30
    assert subclones.call_subclones(Z, seed=0, min_cells=30).max() == 0
    assert subclones.call_subclones(Z, max_clones=1, seed=0).max() == 0


def test_agreement_counts_rule_meeting_patients():
    called = pd.Series({"a": 1.0, "b": 2.0, "c": 1.0, "d": np.nan})
    planted = pd.DataFrame({"planted": [1, 2, 3, 1], "detectable": [True, True, False, True]}, index=list("abcd"))
    s = subclones.subclone_agreement(called, planted)
    assert s["subclones_exact_agreement"] == 1.0 and s["subclones_n_detectable"] == 2  # d not called: left out
    assert s["subclones_agreement_all"] == pytest.approx(2 / 3) and s["subclones_n_patients"] == 3
