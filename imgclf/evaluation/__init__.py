"""Evaluation: metrics (scikit-learn), pictures (matplotlib), likely label errors, the HTML report."""
