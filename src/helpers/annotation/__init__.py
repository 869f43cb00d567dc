"""Annotation: cell types from the marker table, malignant vs normal plasma cells."""
