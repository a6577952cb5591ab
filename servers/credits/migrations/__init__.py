"""Schema migrations of the credits ledger (applied in order at start; see servers.mesh.storage)."""
