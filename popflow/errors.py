"""Exceptions, grouped by what the runner does next.

A message-level error tells the poller what to do with the message in hand:

* :class:`RetryableError` — try the same step again (with backoff); when the
  retries run out the message becomes a dead letter for that sink.
* :class:`DeferMessage` — leave the message on the server and try again on the
  next poll (no DELE). Used when e.g. the virus scanner cannot be reached.
* :class:`DeadLetterError` — give up on this message now: keep its raw bytes as
  a dead letter; it counts as handled and may be deleted from the server.

:class:`SourceFatalError` stops the current run of one source (bad login, a
locked maildrop, a dropped connection); other sources are not affected.
"""

from __future__ import annotations

from popflow.redact import redact


class PopflowError(Exception):
    """Base class of every error popflow raises on purpose."""


class ConfigError(PopflowError):
    """The configuration is invalid. Printed as ``file: key.path: problem``; exit status 2."""

    def __init__(self, problem: str, *, file: str | None = None, path: str | None = None) -> None:
        self.problem = problem
        self.file = file
        self.path = path
        super().__init__(self.describe())

    def describe(self) -> str:
        where = ": ".join(part for part in (self.file, self.path) if part)
        return f"{where}: {self.problem}" if where else self.problem


class PluginLoadError(PopflowError):
    """A plugin could not be imported or registered; ``plugin`` names it."""

    def __init__(self, plugin: str, reason: str) -> None:
        self.plugin = plugin
        super().__init__(f"plugin {plugin!r} failed to load: {reason}")


class StorageError(PopflowError):
    """popflow's own files under ``data_dir`` cannot be written (read-only, full, no permission).

    The message names the path; the poll stops with it, and the message in hand stays on the server.
    """


class DeliveryError(PopflowError):
    """Base class of errors about one message."""


class RetryableError(DeliveryError):
    """A transient failure (network, lock, HTTP 503): retry with backoff, then dead-letter."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeferMessage(DeliveryError):
    """Leave the message on the server untouched and try it again on the next poll."""


class DeadLetterError(DeliveryError):
    """A permanent failure for this message: store it as a dead letter (it counts as handled)."""


class SourceFatalError(PopflowError):
    """This source's run cannot go on (login refused, maildrop locked, connection lost)."""


class SourceConnectionError(SourceFatalError):
    """The connection to the mail server failed or was dropped."""


class ServerMisbehaved(SourceConnectionError):
    """The server broke the protocol (a reply past its bound, a trickle past its deadline).

    The session cannot go on (the reply was not read to its end). ``message_number`` names the
    message whose reply it was, when there was one: the poller records that message as skipped, so
    the next polls leave it on the server and the rest of the mailbox flows.
    """

    def __init__(self, message: str, *, message_number: int | None = None) -> None:
        super().__init__(message)
        self.message_number = message_number


class AuthenticationError(SourceFatalError):
    """The server refused the credentials or the authentication mechanism."""


def describe_error(error: BaseException) -> str:
    """One line: the error class and message (never a traceback), with every registered secret masked.

    This is the text that lands in ``popflow_runs.error``, dead-letter records and the ops page, so it is
    scrubbed here rather than by each caller (an exception's text may quote what a server echoed).
    """
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = redact(text)
    if isinstance(error, PopflowError):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
