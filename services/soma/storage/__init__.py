"""Storage adapters: the session store (SQLite embedded, Redis on a cluster)."""
