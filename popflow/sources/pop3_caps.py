"""What a POP3 server's CAPA answer promises, and what that means for a source's settings.

RFC 2449 lets a server announce policies a client must live with:

* ``LOGIN-DELAY n`` — at least ``n`` seconds between logins; a login sooner is refused with
  ``-ERR [LOGIN-DELAY]``. The schedule (:mod:`popflow.scheduler`) polls no more often than that.
* ``EXPIRE n`` — the server deletes a message ``n`` days after it was first retrieved; ``EXPIRE 0``
  means mail may not be left on the server at all: at QUIT the server may delete every message
  the session retrieved with RETR, DELE or not. ``EXPIRE NEVER`` means it never expires mail.

Both may be followed by ``USER`` before login: the real, per-user value is then announced by CAPA
after login. And RFC 6856: ``UTF8`` — the server can serve messages with raw UTF-8 headers once the
client sends ``UTF8``; until then some servers (Courier) serve a generated substitute instead.

Servers spell these loosely; GNU mailutils 3.15 sends ``EXPIRENEVER`` (no space). Anything
unparseable is ignored with a note rather than guessed at.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from popflow.context import LoginDelay, RuntimeContext
from popflow.errors import SourceFatalError
from popflow.sources.base import SessionInfo
from popflow.sources.pop3_wire import Response

if TYPE_CHECKING:
    from popflow.sources.pop3 import Pop3Config

log = logging.getLogger("popflow.sources.pop3")

EXPIRE_NEVER: Literal["never"] = "never"
MAX_LOGIN_DELAY = 24 * 3600
"""A larger LOGIN-DELAY is taken as this (a day): a typo on the server must not stop popflow for years."""


def parse_capabilities(body: bytes) -> dict[str, list[str]]:
    """CAPA lines → ``{"SASL": ["PLAIN", "XOAUTH2"], "PIPELINING": [], ...}`` (names upper-cased)."""
    capabilities: dict[str, list[str]] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        words = line.split()
        if words:
            capabilities[words[0].upper()] = words[1:]
    return capabilities


@dataclass(frozen=True)
class ServerPolicy:
    """The RFC 2449 / RFC 6856 policies found in one CAPA answer."""

    login_delay: int | None = None
    """Seconds required between logins (``LOGIN-DELAY``), or None when not announced."""
    expire: int | Literal["never"] | None = None
    """Days a retrieved message stays (``EXPIRE``); ``"never"``; None when not announced."""
    per_user: bool = False
    """``LOGIN-DELAY`` or ``EXPIRE`` was followed by ``USER``: CAPA after login tells the real value."""
    utf8: bool = False
    """The server offers RFC 6856 ``UTF8``."""
    problems: list[str] = field(default_factory=list)
    """Announcements that could not be understood (shown by ``check --connect``)."""

    @property
    def expunges_retrieved(self) -> bool:
        """``EXPIRE 0``: a QUIT may delete every message retrieved in the session."""
        return self.expire == 0


def _number(words: list[str]) -> int | None:
    return int(words[0]) if words and words[0].isdigit() else None


def server_policy(capabilities: dict[str, list[str]]) -> ServerPolicy:
    """Read LOGIN-DELAY, EXPIRE and UTF8 from parsed CAPA lines (see :func:`parse_capabilities`)."""
    problems: list[str] = []
    per_user = False
    login_delay: int | None = None
    if "LOGIN-DELAY" in capabilities:
        words = capabilities["LOGIN-DELAY"]
        login_delay = _number(words)
        if login_delay is None:
            problems.append(f"unreadable LOGIN-DELAY {' '.join(words)[:40]!r} ignored")
        elif login_delay > MAX_LOGIN_DELAY:
            problems.append(f"LOGIN-DELAY {login_delay} taken as {MAX_LOGIN_DELAY} (a day)")
            login_delay = MAX_LOGIN_DELAY
        per_user = per_user or words[1:2] == ["USER"]
    expire: int | Literal["never"] | None = None
    if "EXPIRE" in capabilities:
        words = capabilities["EXPIRE"]
        if words and words[0].upper() == "NEVER":
            expire = EXPIRE_NEVER
        else:
            expire = _number(words)
            if expire is None:
                problems.append(f"unreadable EXPIRE {' '.join(words)[:40]!r} ignored")
        per_user = per_user or words[1:2] == ["USER"]
    elif "EXPIRENEVER" in capabilities:  # GNU mailutils 3.15's spelling of EXPIRE NEVER
        expire = EXPIRE_NEVER
    return ServerPolicy(login_delay=login_delay, expire=expire, per_user=per_user,
                        utf8="UTF8" in capabilities, problems=problems)


@dataclass(frozen=True)
class PolicyCheck:
    """What a server's policy means for one source: notes for ``check --connect``, warnings to log."""

    notes: list[str]
    warnings: list[str]


def _schedule(every: float, cron: str | None) -> str:
    return f"cron {cron}" if cron else f"every: {every:g}s"


def check_policy(policy: ServerPolicy, *, every: float, cron: str | None, keep_on_server: bool,
                 delete_after: float | None) -> PolicyCheck:
    """Compare the server's announced policy with the source's settings."""
    notes: list[str] = []
    warnings: list[str] = []
    if policy.login_delay is not None:
        delay = policy.login_delay
        if cron:
            notes.append(f"LOGIN-DELAY {delay}s: cron ticks sooner than {delay}s after a login are postponed")
        elif delay > every:
            notes.append(f"LOGIN-DELAY {delay}s: polls every {delay}s, not {_schedule(every, cron)}")
        else:
            notes.append(f"LOGIN-DELAY {delay}s (schedule {_schedule(every, cron)} already slower)")
    if policy.expire == EXPIRE_NEVER:
        notes.append("EXPIRE NEVER: the server keeps mail until it is deleted")
    elif policy.expire == 0:
        notes.append("EXPIRE 0: the server may delete every retrieved message at QUIT; popflow then ends a "
                     "session that retrieved a message it did not delete without QUIT")
        if keep_on_server:
            warnings.append("keep_on_server: the server does not allow leaving mail on it (EXPIRE 0); popflow "
                            "keeps it there only by never sending QUIT after retrieving, so delete_after and "
                            "other deletions wait for a poll that retrieves nothing")
    elif policy.expire is not None:
        days = policy.expire
        notes.append(f"EXPIRE {days}: the server deletes a message {days} day(s) after it was first retrieved")
        if keep_on_server and (delete_after is None or delete_after > days * 86400):
            promised = "forever" if delete_after is None else f"for {delete_after / 86400:g} day(s) (delete_after)"
            warnings.append(f"keep_on_server: the server deletes retrieved mail after {days} day(s) (EXPIRE {days}); "
                            f"it will not stay on the server {promised}")
    notes += policy.problems
    return PolicyCheck(notes, warnings)


_warned: set[tuple[str, str]] = set()
"""(source, warning) pairs already logged: a policy warning is logged once per process, not every poll."""


class ServerPolicyHandling:
    """The part of :class:`~popflow.sources.pop3_session.Pop3Session` that acts on the server's policy."""

    config: Pop3Config
    context: RuntimeContext
    name: str
    info: SessionInfo
    policy: ServerPolicy
    utf8: bool

    @property
    def label(self) -> str:
        raise NotImplementedError

    def _command(self, line: bytes) -> Response:
        raise NotImplementedError

    def _note_policy(self, connected_at: float) -> None:
        """Read the server's policy from CAPA; tell the scheduler its LOGIN-DELAY (via the context)."""
        self.policy = server_policy(self.info.capabilities)
        if self.policy.login_delay is not None:
            self.context.login_delays[self.name] = LoginDelay(self.policy.login_delay, connected_at)
        else:
            self.context.login_delays.pop(self.name, None)

    def _enable_utf8(self) -> None:
        """RFC 6856 ``UTF8``: without it a server may serve a substitute for a message with UTF-8 headers."""
        reply = self._command(b"UTF8")
        self.utf8 = reply.ok
        if reply.ok:
            self.info.notes.append("UTF8 on (RFC 6856)")
            return
        note = (f"the server offers UTF8 but refused it ({reply.text[:80]}): messages with UTF-8 headers may "
                "be served as substitutes")
        self.info.notes.append(note)
        log.warning("%s: %s", self.label, note)

    def _check_policy(self) -> None:
        cfg = self.config
        found = check_policy(self.policy, every=cfg.interval, cron=cfg.cron, keep_on_server=cfg.keep_on_server,
                             delete_after=cfg.delete_after)
        self.info.notes += found.notes + [f"warning: {text}" for text in found.warnings]
        for text in found.warnings:
            if (self.name, text) not in _warned:
                _warned.add((self.name, text))
                log.warning("%s (source %s): %s", self.label, self.name, text)

    def _quit_would_expunge(self, kept: set[int], deletions: int) -> bool:
        """True when QUIT must not be sent: EXPIRE 0 and retrieved messages that must stay.

        Ending without QUIT applies nothing (RFC 1939), so neither do the session's own DELEs:
        with any pending, this raises so the poller does not record them as deleted.
        """
        if not (self.policy.expunges_retrieved and kept):
            return False
        log.info("%s: ended without QUIT: the server deletes every retrieved message at QUIT (EXPIRE 0) "
                 "and %d retrieved message(s) must stay", self.label, len(kept))
        if deletions:
            raise SourceFatalError(f"{self.label}: {deletions} deletion(s) not applied: QUIT would also delete "
                                   f"{len(kept)} retrieved message(s) that must stay (EXPIRE 0); a later poll "
                                   "deletes them")
        return True
