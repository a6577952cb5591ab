"""Evidence: collected from the live mesh, hash-chained, its head signed, verifiable offline."""
