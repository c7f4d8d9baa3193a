"""The ``popflow`` command line (interim: being split into one module per command group)."""

from popflow.cli import check, ops, run, stored, worker  # noqa: F401  (they register themselves on main)
from popflow.cli.common import main

__all__ = ["main"]
