"""Assessments: controls evaluated on shared evidence, severity-weighted scores, their history."""
