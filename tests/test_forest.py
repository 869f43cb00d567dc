"""PatientForest must be scikit-learn's random forest, only faster: same probabilities and importances."""
from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import SelectFromModel

from helpers.analysis.forest import FAST_AVAILABLE, PatientForest


def _table(n, p, seed, signal=1.0, labels=(0, 1)):
    rng = np.random.default_rng(seed)
    y = np.array([labels[0]] * (n // 2) + [labels[1]] * (n - n // 2))
    X = rng.normal(size=(n, p))
    X[:, :3] += signal * (y == labels[1])[:, None]
    return X, y, rng.normal(size=(7, p))


def test_fast_builder_is_available():
    assert FAST_AVAILABLE, "scikit-learn's tree builder moved: PatientForest runs its slow fallback"


@pytest.mark.parametrize("n,p,seed,n_trees", [(17, 34, 0, 100), (16, 8, 2017031, 100), (40, 5, 3, 30),
                                               (9, 34, 11, 50)])
def test_identical_to_sklearn_random_forest(n, p, seed, n_trees):
    X, y, Xt = _table(n, p, seed)
    ref = RandomForestClassifier(n_estimators=n_trees, random_state=seed, n_jobs=1).fit(X, y)
    fast = PatientForest(n_estimators=n_trees, random_state=seed).fit(X, y)
    np.testing.assert_array_equal(fast.predict_proba(Xt), ref.predict_proba(Xt))
    np.testing.assert_array_equal(fast.predict_proba(X), ref.predict_proba(X))
    np.testing.assert_allclose(fast.feature_importances_, ref.feature_importances_, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(fast.predict(Xt), ref.predict(Xt))


def test_string_labels_and_top_k_selection_match_sklearn():
    X, y, Xt = _table(20, 34, 5, signal=2.5, labels=("CR", "NR"))
    fast = PatientForest(random_state=4).fit(X, y)
    assert list(fast.classes_) == ["CR", "NR"]
    sel_fast = SelectFromModel(PatientForest(random_state=4), max_features=8, threshold=-np.inf).fit(X, y)
    sel_ref = SelectFromModel(RandomForestClassifier(random_state=4, n_jobs=1), max_features=8,
                              threshold=-np.inf).fit(X, y)
    np.testing.assert_array_equal(sel_fast.get_support(), sel_ref.get_support())
    assert sel_fast.get_support()[:3].all()  # the planted genes are selected


def test_a_different_seed_gives_a_different_forest_and_clone_pickle_work():
    X, y, Xt = _table(20, 34, 1)
    a = PatientForest(random_state=1).fit(X, y).predict_proba(Xt)
    b = PatientForest(random_state=2).fit(X, y).predict_proba(Xt)
    assert not np.array_equal(a, b)
    m = clone(PatientForest(n_estimators=10, random_state=3)).fit(X, y)
    m2 = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(m.predict_proba(Xt), m2.predict_proba(Xt))


def test_rejects_bad_input():
    X, y, _ = _table(10, 4, 0)
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        PatientForest().fit(X, y)
    with pytest.raises(ValueError, match="integer random_state"):
        PatientForest(random_state=None).fit(np.ones((4, 2)), [0, 1, 0, 1])
    m = PatientForest(n_estimators=5).fit(np.random.default_rng(0).normal(size=(6, 3)), [0, 1] * 3)
    with pytest.raises(ValueError, match="fitted on 3"):
        m.predict_proba(np.ones((2, 4)))


def test_faster_than_sklearn():
    """Not a timing goal, a guard that the fast path is in use: at least 5x faster (measured ~25x)."""
    X, y, Xt = _table(17, 34, 0)

    def clock(make):
        t = time.perf_counter()
        for s in range(5):
            make(s).fit(X, y).predict_proba(Xt)
        return time.perf_counter() - t

    t_ref = clock(lambda s: RandomForestClassifier(100, random_state=s, n_jobs=1))
    t_fast = clock(lambda s: PatientForest(100, random_state=s))
    assert t_fast * 5 < t_ref, (t_fast, t_ref)
