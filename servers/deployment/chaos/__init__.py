"""Chaos experiments: a steady-state hypothesis, one controlled fault, probes, rollback and a report."""
