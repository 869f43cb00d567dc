"""Report: the scorecard and the figures."""
