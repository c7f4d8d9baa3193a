"""Alembic script directory of popflow's state store (ledger, deliveries, dead letters, quarantine, runs)."""
