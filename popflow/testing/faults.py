"""Scripted faults for :class:`~popflow.testing.POP3TestServer`: make the server misbehave on cue.

A :class:`FaultScript` is an ordered list of rules. Before the server runs a command it asks the
script; the first rule that matches (and still has shots left) decides a :class:`FaultAction`.
Rules are built with :meth:`FaultScript.on`, which returns the script so calls chain::

    from popflow.testing import FaultScript, POP3TestServer

    faults = (
        FaultScript()
        .on("RETR", 3, drop_after_bytes=1000).once()   # cut message 3 mid-transfer, first time only
        .on("DELE", err="-ERR nope")                    # every DELE fails
        .on("RETR", stall=10)                           # other RETRs answer after 10 s
        .on("LOGIN", in_use=True, times=2)              # the first two logins find the maildrop locked
        .on("QUIT", quit_fails=True, session=1)         # the first session's QUIT applies nothing
    )
    with POP3TestServer([b"Subject: hi\\r\\n\\r\\nbody\\r\\n"] * 3, faults=faults) as server:
        ...

Matching: ``command`` is a POP3 command (case-insensitive), ``"LOGIN"`` (any of PASS, APOP, AUTH)
or ``"*"`` (anything). ``message`` matches the first argument as a message number. ``nth`` fires
only on the nth matching command (1-based, counted across sessions); ``times`` (or ``.once()``)
limits how often the rule fires; ``session`` restricts it to the nth connection to the server.

Actions:

* ``drop=True`` — close the connection without answering; with ``drop_after_bytes=N`` the server
  first sends N bytes of the real response (e.g. part of a RETR). ``reset=True`` sends a TCP RST
  instead of a FIN. Nothing marked for deletion is applied.
* ``err="text"`` — answer ``-ERR text`` instead of running the command.
* ``stall=seconds`` — wait, then run the command normally; ``stall=True`` waits until the server
  stops (the client's timeout is what is being tested).
* ``in_use=True`` — answer ``-ERR [IN-USE] maildrop locked`` (meant for the login commands).
* ``quit_fails=True`` — QUIT answers ``-ERR`` and closes without applying deletions.
* ``echo="text"`` — answer ``-ERR text <what the client sent>``, as careless servers do: the
  command's arguments (``PASS``'s password), or for ``AUTH`` without an initial response the line
  the client sends after the server's ``+`` (the base64 SASL response).

For anything else, pass a callback: ``FaultScript(before_command=fn)`` where
``fn(session, command, args)`` returns a :class:`FaultAction` or ``None``; it runs before the
rules. ``session`` is the server's session object (``.number``, ``.state``, ``.user``,
``.tls_active``, ``.deleted``)::

    def every_other_noop(session, command, args):
        if command == "NOOP" and session.number % 2:
            return FaultAction.error("not today")
        return None
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

LOGIN_COMMANDS = frozenset({"PASS", "APOP", "AUTH"})

FaultKind = Literal["drop", "err", "stall", "in_use", "quit_fails", "echo"]


@dataclass(frozen=True)
class FaultAction:
    """What the server does instead of (or, for ``stall``, before) running a command."""

    kind: FaultKind
    text: str | None = None
    """``err``: the reply (``-ERR`` is added when missing); ``quit_fails``/``in_use``: overrides the default."""
    after_bytes: int | None = None
    """``drop``: send this many bytes of the real response first."""
    seconds: float | None = None
    """``stall``: how long; ``None`` means until the server stops."""
    reset: bool = False
    """``drop``: abort with a TCP RST rather than an orderly close."""

    @classmethod
    def drop(cls, after_bytes: int | None = None, *, reset: bool = False) -> FaultAction:
        """Close the connection, optionally after ``after_bytes`` of the real response."""
        return cls("drop", after_bytes=after_bytes, reset=reset)

    @classmethod
    def error(cls, text: str = "injected failure") -> FaultAction:
        """Answer ``-ERR text`` instead of running the command."""
        return cls("err", text=text)

    @classmethod
    def stall(cls, seconds: float | None = None) -> FaultAction:
        """Wait ``seconds`` (or until the server stops) before running the command."""
        return cls("stall", seconds=seconds)

    @classmethod
    def in_use(cls, text: str | None = None) -> FaultAction:
        """Answer ``-ERR [IN-USE] maildrop locked``."""
        return cls("in_use", text=text)

    @classmethod
    def quit_fails(cls, text: str | None = None) -> FaultAction:
        """QUIT answers ``-ERR`` and the deletions are not applied."""
        return cls("quit_fails", text=text)

    @classmethod
    def echo(cls, text: str = "bad") -> FaultAction:
        """Answer ``-ERR text <the client's input>`` (for AUTH: the response after ``+``)."""
        return cls("echo", text=text)

    def reply(self) -> bytes:
        """The response line for ``err``, ``in_use`` and ``quit_fails``."""
        defaults = {"in_use": "[IN-USE] maildrop locked",
                    "quit_fails": "[SYS/TEMP] some deleted messages not removed",
                    "err": "injected failure"}
        text = self.text if self.text is not None else defaults.get(self.kind, "")
        if not text.startswith(("-ERR", "+OK")):
            text = f"-ERR {text}"
        return text.encode("utf-8") + b"\r\n"


BeforeCommand = Callable[[Any, str, list[str]], "FaultAction | None"]


@dataclass
class FaultRule:
    """One rule of a :class:`FaultScript`: what it matches, what it does, how often."""

    command: str
    action: FaultAction
    message: int | None = None
    nth: int | None = None
    times: int | None = None
    session: int | None = None
    seen: int = 0
    """How many commands matched so far."""
    fired: int = 0
    """How many times the action ran."""

    def matches(self, session_number: int, command: str, args: list[str]) -> bool:
        """True when the command fits the rule (ignoring ``nth`` and ``times``)."""
        if self.command == "LOGIN":
            if command not in LOGIN_COMMANDS:
                return False
        elif self.command not in ("*", command):
            return False
        if self.session is not None and self.session != session_number:
            return False
        if self.message is not None:
            return bool(args) and args[0] == str(self.message)
        return True


@dataclass
class FaultScript:
    """An ordered set of :class:`FaultRule` plus an optional ``before_command`` callback; thread-safe."""

    before_command: BeforeCommand | None = None
    rules: list[FaultRule] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def on(self, command: str, message: int | None = None, *, nth: int | None = None,
           times: int | None = None, session: int | None = None, drop: bool = False,
           drop_after_bytes: int | None = None, reset: bool = False, err: str | None = None,
           stall: float | bool | None = None, in_use: bool = False, quit_fails: bool = False,
           echo: str | None = None, action: FaultAction | None = None) -> FaultScript:
        """Add a rule; give exactly one action (``drop``/``drop_after_bytes``, ``err``, ``stall``,
        ``in_use``, ``quit_fails``, ``echo`` or a ready ``action``). Returns the script for chaining."""
        chosen: list[FaultAction] = []
        if drop or drop_after_bytes is not None:
            chosen.append(FaultAction.drop(drop_after_bytes, reset=reset))
        if err is not None:
            chosen.append(FaultAction.error(err))
        if stall is not None and stall is not False:
            chosen.append(FaultAction.stall(None if stall is True else float(stall)))
        if in_use:
            chosen.append(FaultAction.in_use())
        if quit_fails:
            chosen.append(FaultAction.quit_fails())
        if echo is not None:
            chosen.append(FaultAction.echo(echo))
        if action is not None:
            chosen.append(action)
        if len(chosen) != 1:
            raise ValueError("give exactly one fault action per rule")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1")
        rule = FaultRule(command.upper(), chosen[0], message=message, nth=nth, times=times, session=session)
        with self._lock:
            self.rules.append(rule)
        return self

    def once(self) -> FaultScript:
        """Make the last rule added fire only once."""
        return self.times(1)

    def times(self, count: int) -> FaultScript:
        """Make the last rule added fire at most ``count`` times."""
        if not self.rules:
            raise ValueError("add a rule with .on() first")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self.rules[-1].times = count
        return self

    def decide(self, session: Any, command: str, args: list[str]) -> FaultAction | None:
        """The action for this command, or ``None`` to run it normally. Called by the server."""
        if self.before_command is not None:
            action = self.before_command(session, command, args)
            if action is not None:
                return action
        with self._lock:
            for rule in self.rules:
                if not rule.matches(session.number, command, args):
                    continue
                rule.seen += 1
                if rule.nth is not None and rule.seen != rule.nth:
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                rule.fired += 1
                return rule.action
        return None
