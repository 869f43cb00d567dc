"""A random forest identical to scikit-learn's, fast on patient tables (tens of rows).

``RandomForestClassifier`` spends almost all of a fit on a 20-patient table in per-tree Python work: input
validation of every tree (``check_classification_targets``, ``check_array``...) and a new ``RandomState`` seeded
from the OS for every tree. Growing the tree itself takes microseconds. The classifier's permutation test fits
5,000 forests (1,000 permutations x 5 folds), so that overhead was 95% of notebook 07's run time.

:class:`PatientForest` validates the input once and grows each tree with scikit-learn's own Cython
builder (``DepthFirstTreeBuilder`` + ``BestSplitter`` + ``Gini``), drawing the per-tree seeds, bootstrap
samples and splitter seeds exactly as ``RandomForestClassifier.fit`` does. The trees, probabilities and
impurity importances are therefore bit-identical to
``RandomForestClassifier(n_estimators, random_state=seed, max_features="sqrt", bootstrap=True)``
(tests/test_forest.py checks this over seeds and shapes). Measured: ~25x faster per forest of 100 trees on
17 x 34 (6 ms against 155 ms).

The builder classes are private scikit-learn API. If they move in a future release, :data:`FAST_AVAILABLE`
is False and :class:`PatientForest` falls back to fitting a plain ``RandomForestClassifier`` (same results,
slower), with a warning, so nothing breaks silently.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier

try:  # private scikit-learn API (checked against scikit-learn 1.9; see the module docstring)
    from sklearn.tree._criterion import Gini
    from sklearn.tree._splitter import BestSplitter
    from sklearn.tree._tree import DepthFirstTreeBuilder, Tree

    FAST_AVAILABLE = True
except ImportError:  # pragma: no cover - only on a scikit-learn that moved its tree internals
    FAST_AVAILABLE = False

_MAX_INT = np.iinfo(np.int32).max


def _grow_trees(X: np.ndarray, y_codes: np.ndarray, n_classes: int, n_estimators: int, seed: int) -> list:
    """Grow ``n_estimators`` fully grown Gini trees on bootstrap samples, seeded like RandomForestClassifier."""
    n, p = X.shape
    Y = np.ascontiguousarray(y_codes.reshape(-1, 1), dtype=np.float64)
    ncls = np.array([n_classes], dtype=np.intp)
    max_features = max(1, int(np.sqrt(p)))
    # RandomForestClassifier: one int seed per tree from RandomState(random_state); each tree then seeds a
    # RandomState with it twice: once for its bootstrap indices, once for its splitter (which reads one draw
    # at construction). Re-seeding one RandomState gives the same streams without OS entropy per tree.
    tree_seeds = np.random.RandomState(seed).randint(_MAX_INT, size=n_estimators)
    rs = np.random.RandomState(0)
    trees = []
    for s in tree_seeds:
        rs.seed(s)
        weight = np.bincount(rs.randint(0, n, n), minlength=n).astype(np.float64)
        rs.seed(s)
        splitter = BestSplitter(Gini(1, ncls), max_features, 1, 0.0, rs, None)
        tree = Tree(p, ncls, 1)
        DepthFirstTreeBuilder(splitter, 2, 1, 0.0, _MAX_INT, 0.0).build(tree, X, Y, weight, None)
        trees.append(tree)
    return trees


class PatientForest(ClassifierMixin, BaseEstimator):
    """Random forest classifier (Gini, fully grown trees, sqrt(p) features per split, bootstrap), identical
    to ``RandomForestClassifier(n_estimators=n_estimators, random_state=random_state)``; see the module doc.

    Works inside scikit-learn pipelines and ``SelectFromModel`` (``feature_importances_``)."""

    def __init__(self, n_estimators: int = 100, random_state: int = 0):
        self.n_estimators = n_estimators
        self.random_state = random_state

    def fit(self, X, y):
        X = np.ascontiguousarray(X, dtype=np.float32)
        y = np.asarray(y)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"X must be samples x features with one label per sample; got X {X.shape}, y {y.shape}")
        if not np.isfinite(X).all():
            raise ValueError("features contain NaN or infinite values")
        self.classes_, codes = np.unique(y, return_inverse=True)
        self.n_features_in_ = X.shape[1]
        if not isinstance(self.random_state, (int, np.integer)):
            raise ValueError("PatientForest needs an integer random_state (results must be reproducible)")
        if FAST_AVAILABLE:
            self.trees_ = _grow_trees(X, codes, len(self.classes_), self.n_estimators, int(self.random_state))
            self.fallback_ = None
        else:  # pragma: no cover
            warnings.warn("scikit-learn's tree builder API moved: PatientForest falls back to RandomForestClassifier "
                          "(same results, slower)", RuntimeWarning, stacklevel=2)
            self.trees_ = None
            self.fallback_ = RandomForestClassifier(self.n_estimators, random_state=self.random_state,
                                                    n_jobs=1).fit(X, codes)
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[-1]} features; the forest was fitted on {self.n_features_in_}")
        if self.fallback_ is not None:  # pragma: no cover
            return self.fallback_.predict_proba(X)
        out = np.zeros((X.shape[0], len(self.classes_)), dtype=np.float64)
        for tree in self.trees_:  # summed in tree order, as RandomForestClassifier does with n_jobs=1
            out += tree.predict(X)[:, : len(self.classes_)]
        return out / len(self.trees_)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    @property
    def feature_importances_(self) -> np.ndarray:
        """Mean impurity (Gini) importance over trees, normalised to sum 1 (as RandomForestClassifier)."""
        if self.fallback_ is not None:  # pragma: no cover
            return self.fallback_.feature_importances_
        imp = [t.compute_feature_importances() for t in self.trees_ if t.node_count > 1]
        if not imp:
            return np.zeros(self.n_features_in_)
        mean = np.mean(imp, axis=0, dtype=np.float64)
        return mean / np.sum(mean)
