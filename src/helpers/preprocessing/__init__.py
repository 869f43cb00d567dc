"""Preprocessing: normalisation, QC and doublets, integration and the per-sample (Dask) path."""
