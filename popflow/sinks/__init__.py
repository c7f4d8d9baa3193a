"""Built-in sinks (folder, database) and the :class:`~popflow.sinks.base.Sink` base class."""
