"""Schema of the chaos experiments (versions counted for this package alone)."""
