"""Cell-type composition per patient and CR-vs-NR tests at the patient level (logit proportions)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from helpers.analysis.stats import compare_groups


def patient_fractions(obs: pd.DataFrame, label: str = "cell_type", patient: str = "patient_id",
                      exclude: list[str] | None = None) -> pd.DataFrame:
    """Patients x labels fraction table (rows sum to 1), optionally leaving some labels out of the denominator
    (e.g. malignant plasma cells, whose share varies widely and would distort the microenvironment)."""
    o = obs[[patient, label]].astype(str)
    if exclude:
        o = o[~o[label].isin(exclude)]
    counts = pd.crosstab(o[patient], o[label])
    return counts.div(counts.sum(1), axis=0)


def composition_test(fractions: pd.DataFrame, groups: pd.Series, reference: str, test: str,
                     pseudo: float = 1e-3) -> pd.DataFrame:
    """Logit-proportion test per cell type: effect = Hodges-Lehmann shift of logit(fraction) NR vs CR."""
    f = fractions.clip(lower=pseudo, upper=1 - pseudo)
    res = compare_groups(np.log(f / (1 - f)), groups, reference, test,
                         method="logit fraction per patient, Hodges-Lehmann shift, Mann-Whitney, BH")
    res = res.rename(columns={"feature": "cell_type"})
    return res
