"""helpers: the tested package behind the compendium's notebooks.

One module per concern: cohort (spec, paths, validation), simulate (the default cohort), ingest (real
cohorts), runner (papermill), io (atomic outputs), genesets (committed gene sets), describe and plots.
"""

__version__ = "0.1.0"
