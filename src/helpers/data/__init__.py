"""Data in: cohort definitions and validation, the simulator, real-cohort ingest, gene sets and symbols."""
