"""Alembic environment for the state store; run through :func:`popflow.migrate.upgrade`."""

from alembic import context

from popflow.migrate import run_migrations_online

run_migrations_online(context)
