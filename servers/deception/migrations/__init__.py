"""The deception service's schema migrations (numbered SQL files, applied at start)."""
