"""Validation against truth and real cells: QC/annotation goals, realism, snapshots, calibration."""
