"""Schema migrations of the deployment server's store (applied in order at start)."""
