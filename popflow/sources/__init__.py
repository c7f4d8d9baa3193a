"""Built-in sources (POP3) and the :class:`~popflow.sources.base.Source` base class."""
