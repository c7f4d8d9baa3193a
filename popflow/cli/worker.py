"""``popflow worker``: a Celery worker running the poll tasks that ``popflow run`` enqueues.

Polls run in threads of this one process (``--concurrency`` of them, sharing one state-store
pool), like ``popflow run``'s own: POP3 polls wait on the network, not the CPU. SIGTERM or SIGINT
is Celery's warm shutdown, and popflow's stop signal on top: running polls finish the message in
hand, send QUIT (the deletions they earned apply), release their leases, and the worker exits 0.
Tasks this worker had reserved but not started go back to the broker. A second SIGINT (or SIGQUIT)
is Celery's cold shutdown: unfinished messages stay on the server, which the ledger makes safe.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from popflow.app import App
from popflow.cli.common import (
    config_option,
    fail,
    open_app,
    ops_server,
    prepare_data_dir,
    stop_on_signals,
    user_errors,
)
from popflow.processes import this_host
from popflow.redact import display_url

log = logging.getLogger("popflow.worker")


@click.command()
@config_option
@click.option("--concurrency", type=click.IntRange(1, 1000), default=4, show_default=True,
              help="polls this worker runs at once (threads)")
@click.option("--name", "node_name", default=None, help="the worker's node name (default popflow@HOST:PID)")
@click.option("--http", "http_listen", metavar="ADDR", default=None,
              help="serve this worker's /metrics, /healthz, /readyz and status page on ADDR (a bare port means "
                   "loopback); overrides the config's http.listen")
@click.pass_context
def worker(ctx: click.Context, config_path: Path | None, concurrency: int, node_name: str | None,
           http_listen: str | None) -> None:
    """Run poll tasks from the broker (config ``executor: {type: celery, broker: ...}``) until SIGTERM."""
    from popflow.ops.listen import parse_listen

    try:
        listen = parse_listen(http_listen) if http_listen is not None else None
    except ValueError as exc:
        fail(f"--http: {exc}")
    with open_app(ctx, config_path) as app:
        settings = app.config.executor
        if settings.type != "celery":
            fail(f"{app.file}: `popflow worker` needs `executor: {{type: celery, broker: ...}}` in the config; "
                 "with the default local executor, `popflow run` polls by itself")
        prepare_data_dir(app)
        # Imported here, not at the top: every other command starts without Celery.
        from popflow.executors.celery_app import make_celery, on_worker_shutdown

        with user_errors():
            celery = make_celery(settings, app)

        def on_shutdown() -> None:
            log.info("popflow worker: stopping; running polls finish the message in hand, then QUIT")
            app.context.stop.set()

        on_worker_shutdown(on_shutdown)
        for chatty in ("celery.worker.strategy", "celery.app.trace", "celery.worker.consumer"):
            # One line per poll is popflow's own summary; Celery's "received"/"succeeded" lines add nothing.
            logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
        hostname = node_name or f"popflow@{this_host()}:{os.getpid()}"
        level = logging.getLevelName(logging.getLogger().level)
        worker_process = celery.Worker(
            hostname=hostname, pool="threads", concurrency=concurrency, queues=[settings.queue],
            loglevel=level, quiet=True, without_gossip=True, without_mingle=True,
            optimization="fair",  # hand a task to a thread only when it is free (with prefetch 1)
        )
        # Only the polls this worker runs, series made as sources are polled (not one per source up
        # front: a fleet's registry may hold 100,000); /healthz is 503 once it stops.
        ops = ops_server(app, None, listen, sources=[])
        log.info("popflow worker %s: %d thread(s) on queue %s", hostname, concurrency, settings.queue)
        try:
            worker_process.start()
        finally:
            if ops is not None:
                ops.close()
    code = int(getattr(worker_process, "exitcode", 0) or 0)
    log.info("popflow worker %s: stopped (exit %d)", hostname, code)
    sys.exit(code)


def dispatch_until_signal(app: App, names: list[str]) -> None:
    """``popflow run`` with ``executor: celery``: enqueue poll tasks on schedule until SIGINT/SIGTERM.

    ``app`` stays open: the caller's :func:`~popflow.cli.common.open_app` closes it."""
    from popflow.executors.dispatcher import Dispatcher

    with user_errors():
        dispatcher = Dispatcher(app, names, sources=app.refresh_sources)

    log.info("popflow run: scheduling %d source(s) onto queue %s at %s; stop with Ctrl-C or SIGTERM", len(names),
             app.config.executor.queue, display_url(app.config.executor.broker or ""))
    with stop_on_signals(dispatcher.stop.set, "stopping the scheduler (running polls go on on their workers)"):
        dispatcher.run()
    log.info("popflow run: stopped after enqueuing %d poll(s)", dispatcher.enqueued)


COMMANDS = [worker]
