"""A real popa3d (Debian's 1.0.3) for tests: a POP3 server whose UIDLs are not unique.

popa3d derives a message's UIDL from a hash of a few of its headers, so messages with the same
From/To/Subject and no Date/Message-ID share one UIDL in one listing. It serves the system user's
mbox spool (``/var/mail/<user>``), authenticates through PAM (service ``popa3d``; without
``/etc/pam.d/popa3d`` PAM falls back to ``other``, i.e. ``common-auth``: pam_unix and /etc/shadow),
and speaks USER/PASS only: no CAPA, no TLS, no APOP.

Usage in a test::

    from tests.support.popa3d import Popa3dServer

    def test_something(tmp_path):
        server = Popa3dServer.start(tmp_path)
        try:
            server.fill([b"Subject: hi\\r\\n\\r\\nbody\\r\\n"])
            ...  # talk to server.host:server.port as server.username / server.password
            assert server.remaining() == 1
        finally:
            server.stop()

or the fixture ``popa3d`` (function scope), which does the same.

How it runs: popa3d's package is never installed (it conflicts with ``dovecot-pop3d``: both
provide ``pop3-server``); ``scripts/setup-test-env.sh`` unpacks it into ``/opt/popflow-test/popa3d``
(``$POPA3D_PREFIX``; ``$POPA3D_BINARY`` names the binary itself). popa3d is used in its inetd mode:
an accept loop (``tests/support/inetd.py``) on a free loopback port starts one popa3d per
connection with the socket as its stdin and stdout. What the binary hard-codes, and :meth:`Popa3dServer.start`
provides (as root, idempotently): the privilege-separation user ``popa3d`` and its empty chroot
``/var/lib/popa3d`` (root:root 0755, as the package's postinst makes it), and the spool
``/var/mail``. The mail user ``popflow-popa3d`` is a system user with no home and no shell; each
start gives it a fresh random password (``chpasswd``), and its mbox is emptied at start and stop.

One mbox per user means one server per machine at a time: a server holds an exclusive lock
(``/run/lock/popflow-popa3d.lock``) from start to stop, so concurrent test runs (other worktrees)
wait for each other instead of sharing a mailbox.

Requirements: root and the unpacked binary. Under ``CI=true``, or as root, an unavailable popa3d
fails the test; only a non-root run outside CI skips, with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.inetd import InetdListener

PREFIX = Path(os.environ.get("POPA3D_PREFIX", "/opt/popflow-test/popa3d"))
PRIVSEP_USER = "popa3d"
"""The user popa3d drops to before it parses anything (compiled in)."""
CHROOT = Path("/var/lib/popa3d")
"""The empty folder popa3d chroots into for its unauthenticated part (compiled in)."""
SPOOL = Path("/var/mail")
"""Where popa3d finds ``<user>``'s mbox (compiled in)."""
MAIL_USER = "popflow-popa3d"
"""The system user whose mbox the tests fill."""
LOCK_PATH = Path("/run/lock/popflow-popa3d.lock")
LOCK_WAIT = 240.0
ENVELOPE = b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970"
"""The default From_ line of every message :meth:`Popa3dServer.fill` writes."""

_FROM_LINE = re.compile(rb"^>*From ", re.M)


class Popa3dUnavailable(RuntimeError):
    """popa3d cannot be run here (not root, binary missing, user cannot be created)."""


def unavailable(reason: str) -> None:
    """Fail under CI=true or as root (setup-test-env.sh provides everything); skip otherwise."""
    if os.environ.get("CI") in ("true", "1"):
        pytest.fail(f"popa3d is required under CI=true: {reason}", pytrace=False)
    if os.geteuid() == 0:
        pytest.fail(f"popa3d is not available (run scripts/setup-test-env.sh as root): {reason}", pytrace=False)
    pytest.skip(f"popa3d not available: {reason}")


def binary() -> Path | None:
    """The popa3d binary: ``$POPA3D_BINARY``, the unpacked one, else one on the PATH."""
    candidates = [os.environ.get("POPA3D_BINARY"), str(PREFIX / "usr/sbin/popa3d"), shutil.which("popa3d"),
                  "/usr/sbin/popa3d"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def mbox_bytes(messages: list[bytes], envelope: bytes = ENVELOPE) -> bytes:
    """``messages`` as one mbox: LF line ends, a From_ line each, ``>From`` quoting (mboxrd), a blank
    line between messages. popa3d serves each line back with CRLF and does not unquote."""
    out = bytearray()
    for raw in messages:
        text = raw.replace(b"\r\n", b"\n")
        text = _FROM_LINE.sub(lambda found: b">" + found.group(0), text)
        if not text.endswith(b"\n"):
            text += b"\n"
        out += envelope + b"\n" + text + b"\n"
    return bytes(out)


def split_mbox(data: bytes) -> list[bytes]:
    """The messages of an mbox as stored (From_ line and the separating blank line removed)."""
    if not data:
        return []
    parts = re.split(rb"(?:\A|(?<=\n\n))From [^\n]*\n", data)
    if parts[0]:
        raise ValueError(f"not an mbox: starts with {data[:40]!r}")
    return [part[:-1] if part.endswith(b"\n\n") else part for part in parts[1:]]


def _run(command: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, input=stdin, capture_output=True, text=True, check=False, timeout=60)


def _ensure_user(name: str, home: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    result = _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", home,
                   "--shell", "/usr/sbin/nologin", name])
    try:  # another process may have created it at the same time
        return pwd.getpwnam(name)
    except KeyError:
        raise Popa3dUnavailable(f"cannot create user {name}: {result.stderr.strip()}") from None


def _ensure_chroot() -> None:
    CHROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chown(CHROOT, 0, 0)
    CHROOT.chmod(0o755)


def _lock() -> int:
    """An exclusive lock on the one mbox popa3d can serve; waits for another test run's server."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise Popa3dUnavailable(f"{LOCK_PATH} is held by another test run for over {LOCK_WAIT:.0f} s") from None
            time.sleep(0.2)


@dataclass
class Popa3dServer:
    """A popa3d on a loopback port serving ``username``'s mbox; see the module docstring."""

    root: Path
    binary: Path
    host: str
    port: int
    username: str
    password: str
    mbox: Path
    uid: int
    gid: int
    log_path: Path
    _inetd: InetdListener = field(repr=False)
    _lock_fd: int = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    # -- life cycle ------------------------------------------------------------------------------
    @classmethod
    def start(cls, tmp_path: Path) -> Popa3dServer:
        """Start listening on a free loopback port; raise :class:`Popa3dUnavailable` if it can't."""
        if os.geteuid() != 0:
            raise Popa3dUnavailable("popa3d authenticates system users and serves /var/mail: needs root")
        program = binary()
        if program is None:
            raise Popa3dUnavailable(f"no popa3d binary in {PREFIX}/usr/sbin (scripts/setup-test-env.sh unpacks it)")
        version = _run([str(program), "-V"])
        if version.returncode != 0:
            raise Popa3dUnavailable(f"{program} -V exited {version.returncode}: {version.stderr.strip()}")
        _ensure_user(PRIVSEP_USER, str(CHROOT))
        _ensure_chroot()
        user = _ensure_user(MAIL_USER, "/nonexistent")
        lock_fd = _lock()
        try:
            password = f"pw-{secrets.token_hex(8)}"
            result = _run(["chpasswd"], stdin=f"{MAIL_USER}:{password}\n")
            if result.returncode != 0:
                raise Popa3dUnavailable(f"chpasswd for {MAIL_USER} failed: {result.stderr.strip()}")
            root = tmp_path / "popa3d"
            root.mkdir(parents=True, exist_ok=True)
            log_path = root / "popa3d.log"
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
            inetd = InetdListener([str(program)], env, log_path)
            server = cls(root=root, binary=program, host="127.0.0.1", port=0, username=MAIL_USER,
                         password=password, mbox=SPOOL / MAIL_USER, uid=user.pw_uid, gid=user.pw_gid,
                         log_path=log_path, _inetd=inetd, _lock_fd=lock_fd)
            server.fill([])
            server.port = inetd.start().port
        except BaseException:
            os.close(lock_fd)
            raise
        return server

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Wait until no popa3d session runs (popa3d rewrites the mbox as a session ends)."""
        self._inetd.wait_idle(timeout)

    def stop(self) -> None:
        """Stop listening, end the sessions still running, empty the mbox and release the lock."""
        if self._stopped:
            return
        self._stopped = True
        self._inetd.stop()
        try:
            self._write(b"")
        finally:
            os.close(self._lock_fd)

    # -- the mailbox -----------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        tmp = SPOOL / f".{MAIL_USER}.popflow-fill.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchown(fd, self.uid, self.gid)
            os.fchmod(fd, 0o600)
            os.fsync(fd)
        os.rename(tmp, self.mbox)

    def fill(self, messages: list[bytes], *, envelope: bytes = ENVELOPE) -> None:
        """Replace the mailbox with ``messages`` (see :func:`mbox_bytes`); between sessions only."""
        self.wait_idle()
        self._write(mbox_bytes(messages, envelope))

    def mbox_data(self) -> bytes:
        """The mbox file as it is now (after every session ended)."""
        self.wait_idle()
        try:
            return self.mbox.read_bytes()
        except FileNotFoundError:
            return b""

    def stored(self) -> list[bytes]:
        """The stored bytes (LF, ``>From`` quoted) of every message left in the mbox."""
        return split_mbox(self.mbox_data())

    def remaining(self) -> int:
        """Messages left in the mbox."""
        return len(self.stored())

    def log(self) -> str:
        """What popa3d wrote to stderr (it logs to syslog, so usually nothing)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def start_or_skip(tmp_path: Path) -> Popa3dServer:
    """:meth:`Popa3dServer.start`, or fail/skip the test through :func:`unavailable`."""
    try:
        return Popa3dServer.start(tmp_path)
    except Popa3dUnavailable as exc:
        unavailable(str(exc))
        raise  # unreachable: unavailable() fails or skips


@pytest.fixture
def popa3d(tmp_path: Path) -> Iterator[Popa3dServer]:
    """A running popa3d with an empty mbox, stopped after the test."""
    server = start_or_skip(tmp_path)
    try:
        yield server
    finally:
        server.stop()
