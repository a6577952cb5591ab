"""Schema migrations every credits shard gets on top of the ledger's: write fences and "moved" markers."""
