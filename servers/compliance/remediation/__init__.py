"""Remediation tasks opened for failing controls, with due times, resolved when the control passes."""
