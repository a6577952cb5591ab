"""Schema migrations of the credits coordinator log (the credits server's own store, topology mode)."""
