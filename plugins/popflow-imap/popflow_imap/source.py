"""The ``imap`` source type: options, connecting, and watching folders with IDLE in ``popflow run``."""

from __future__ import annotations

import threading
from collections.abc import Callable

from popflow.sources.pop3 import Pop3Source
from popflow_imap.config import ImapConfig
from popflow_imap.idle import watch_folder
from popflow_imap.session import ImapSession


class ImapSource(Pop3Source):
    """An IMAP mailbox (RFC 3501): one or more folders, ``after: delete | move:FOLDER | seen``, IDLE.

    Passwords, password files and OAuth2 tokens are read exactly as the POP3 source reads them
    (its methods are inherited); everything on the wire is this package's own.
    """

    config_model = ImapConfig
    config: ImapConfig

    def session(self) -> ImapSession:
        """A new, unopened session with this source's credentials."""
        uses_token = self.config.uses_token
        return ImapSession(self.config, self.context, self.name,
                           password=None if uses_token else self._read_password,
                           token=self._read_token if uses_token else None)

    def connect(self) -> ImapSession:  # type: ignore[override]  # a SourceSession, as Source.connect promises
        """Connect, upgrade to TLS, log in and SELECT each folder; ready for ``list_messages``."""
        session = self.session()
        session.open()
        return session

    def describe(self) -> str:
        """E.g. ``imaps://user@host:993 INBOX, Orders (after delete, idle, auth auto)``; never secrets."""
        cfg = self.config
        scheme = "imaps" if cfg.tls == "implicit" else "imap"
        extras = {"starttls": ["starttls"], "none": ["no TLS"]}.get(cfg.tls, [])
        if not cfg.tls_verify:
            extras.append("certificate NOT verified")
        extras += [f"after {cfg.after}", "idle" if cfg.idle else "no idle", f"auth {cfg.auth}"]
        folders = ", ".join(cfg.folders)
        return f"{scheme}://{cfg.username}@{cfg.host}:{cfg.server_port} {folders} ({', '.join(extras)})"

    def mailbox_identity(self) -> str:
        """``imap://user@host:port`` (host lower-cased); the folder is part of each message's key."""
        cfg = self.config
        return f"imap://{cfg.username}@{cfg.host.lower().rstrip('.')}:{cfg.server_port}"

    def watch(self, wake: Callable[[], None]) -> None:
        """With ``idle: true``: IDLE on every folder (one connection each) and ``wake()`` on new mail."""
        if not self.config.idle:
            return
        stop = self.context.stop
        threads = [threading.Thread(target=watch_folder, args=(self, folder, wake, stop),
                                    name=f"idle {self.name} {folder}", daemon=True)
                   for folder in self.config.folders[1:]]
        for thread in threads:
            thread.start()
        watch_folder(self, self.config.folders[0], wake, stop)
        for thread in threads:
            thread.join(timeout=10)
