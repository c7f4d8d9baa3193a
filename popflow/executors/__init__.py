"""Where polls run: ``executor: local`` (``popflow run``'s own threads) or ``celery`` (worker processes).

* :mod:`popflow.executors.ticks` — the schedule's ticks in the state store: each tick of each
  source is claimed by exactly one scheduler and polled at most once;
* :mod:`popflow.executors.dispatcher` — ``popflow run`` with ``executor: celery``: computes the
  ticks and enqueues one poll task per claimed tick;
* :mod:`popflow.executors.celery_app` — the Celery app, its settings and the poll task that
  ``popflow worker`` runs.
"""
