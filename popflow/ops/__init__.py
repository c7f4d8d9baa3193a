"""The operator kit: metrics, health and status over HTTP, ``popflow status``, the config schema.

Kept apart from the poll engine: :mod:`popflow.app` calls one observer per finished poll
(:class:`popflow.ops.metrics.PollMetrics`), and everything else here only reads the state store.
"""
