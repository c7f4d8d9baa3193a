"""The Celery side of ``executor: celery``: the app, its delivery settings, and the poll task.

Settings and why (see docs/scale-out.md):

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a poll task is acknowledged only after the
  poll returned, so a worker that dies mid-poll leaves its task on the broker for another worker;
* ``worker_prefetch_multiplier = 1``: a worker reserves no more tasks than it has free threads, so
  a busy or dying worker does not sit on polls that others could run;
* ``visibility_timeout`` (Redis) longer than the lease, with room for long polls: Redis hands an
  unacknowledged task to another worker after it, and by then the dead worker's lease has expired;
* no result backend: the outcome of a poll is in the state store (``popflow_runs``, ``popflow_schedule``).

The task is idempotent: it polls only if its tick has not finished (:class:`TickBook.start`), and
the poll itself is exactly-once through the ledger and the source's lease.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from popflow.config import ExecutorSettings
from popflow.errors import ConfigError
from popflow.executors.task import PollTask

try:
    from celery import Celery, signals
    from celery.exceptions import Reject
except ImportError:  # an optional extra (popflow[redis], popflow[amqp]): make_celery() says how to get it
    Celery = None

if TYPE_CHECKING:
    from popflow.app import App

log = logging.getLogger("popflow.worker")

TASK_NAME = "popflow.poll"


def visibility_timeout(settings: ExecutorSettings) -> float:
    """Seconds Redis waits before handing an unacknowledged task to another worker."""
    return max(3600.0, 4 * settings.lease)


def make_celery(settings: ExecutorSettings, app: App | None = None) -> Celery:
    """A Celery app on ``settings.broker``; with ``app`` (a worker), the poll task runs polls of it."""
    if Celery is None:
        raise ConfigError("executor type 'celery' needs the celery package: pip install 'popflow[redis]' "
                          "(or 'popflow[amqp]')", path="executor.type")
    celery = Celery("popflow", broker=settings.broker, set_as_current=False)
    celery.conf.update(
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,  # popflow's own log lines (redacted, one per event)
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": visibility_timeout(settings)},
        task_serializer="json",
        accept_content=["json"],
    )
    if app is not None:
        runner = PollTask(app, settings)

        def poll(source: str, tick: int) -> str:
            if app.context.stop.is_set():
                # Shutting down: give the task back to the broker for another worker, untouched.
                raise Reject("worker shutting down", requeue=True)
            return runner.run(source, int(tick))

        celery.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)(poll)
    return celery


def on_worker_shutdown(callback: Callable[[], None]) -> None:
    """Call ``callback`` when a worker of this process starts its warm shutdown (SIGTERM, SIGINT)."""
    def receiver(**_kwargs: Any) -> None:
        callback()

    signals.worker_shutting_down.connect(receiver, weak=False)


def enqueue(celery: Celery, settings: ExecutorSettings, source: str, tick: int) -> None:
    """Send one poll task (no result kept)."""
    celery.send_task(TASK_NAME, args=[source, tick], queue=settings.queue, ignore_result=True)


def check_broker(settings: ExecutorSettings, timeout: float = 5.0) -> str:
    """Connect to the broker once; what it holds for the queue, as one line (raises on failure)."""
    celery = make_celery(settings)
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)
        with connection.channel() as channel:
            declared = channel.queue_declare(settings.queue, passive=False, durable=True, auto_delete=False)
        transport = connection.transport_cls
    name = getattr(declared, "queue", settings.queue)
    count = getattr(declared, "message_count", None)
    return f"{transport} broker reachable; queue {name}: {count if count is not None else '?'} task(s) waiting"
