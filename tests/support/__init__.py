"""Test support: the runtime's own test contract, servers and probes."""
