"""Tables every service's store has (applied before the service's own migrations)."""
