"""The config's rules: ``filters:`` and ``routes:``.

* :mod:`popflow.rules.match` — one ``match:`` block compiled into a :class:`~popflow.rules.match.Matcher`;
* :mod:`popflow.rules.config_rules` — the built-in filter and router plugin that applies them
  (registered under its historical plugin name ``popflow.stages.rules``).
"""
