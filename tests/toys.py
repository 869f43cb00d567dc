"""Small synthetic inputs shared by several test modules."""
from __future__ import annotations

import numpy as np
import pandas as pd


def patient_table(n: int = 24, p: int = 34, signal: float = 0.0, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` patients x ``p`` standard-normal features (half CR = 0, half NR = 1); the first three features are
    shifted by ``signal`` in NR."""
    rng = np.random.default_rng(seed)
    y = np.array([0] * (n // 2) + [1] * (n - n // 2))
    X = rng.normal(size=(n, p))
    X[:, :3] += signal * y[:, None]
    return pd.DataFrame(X, columns=[f"G{i}" for i in range(p)]), y
