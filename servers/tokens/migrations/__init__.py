"""Schema of the token service: clients, signing keys (public halves), revocations."""
