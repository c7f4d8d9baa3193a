"""A private Dovecot POP3 server for tests: real peer, own config, never the system instance.

Usage in a test module (tests/conftest.py registers the fixtures for every module)::

    def test_something(dovecot):          # empty mailbox, server shared by the whole session
        dovecot.deliver(b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        assert dovecot.count() == 1

Fixtures:

* ``dovecot_server`` (session scope): starts one Dovecot for the whole test session and stops it
  at the end. The instance is a module-level singleton, so several test modules importing the
  fixture share one server.
* ``dovecot`` (function scope): the same server with an empty mailbox (``reset()`` before the test).

:class:`DovecotServer` attributes: ``host`` (``127.0.0.1``), ``port`` (plain POP3, offers STLS),
``tls_port`` (implicit TLS, POP3S), ``imap_port`` / ``imaps_port`` (IMAP with STARTTLS / implicit TLS,
for plugins/popflow-imap), ``ca_file`` (the ``trustme`` CA that signed the server
certificate for ``127.0.0.1`` and ``localhost``), ``username``, ``password``, ``oauth2_token`` (a
bearer token the server accepts through SASL XOAUTH2/OAUTHBEARER, checked against a local
introspection endpoint), ``maildir`` (the user's Maildir), ``log_path``.
Methods: ``deliver(raw) -> str`` (drop a message into ``Maildir/new`` under a unique name; works while
a session is running), ``count()`` (messages left on the server: files in ``new/`` + ``cur/``),
``stored()`` (the stored bytes of every message, in delivery order), ``reset()`` (empty the
mailbox), ``log()`` (the server log), ``stop()`` (also deletes the instance's directory).

Also offered by the server: USER/PASS, APOP (timestamp in the greeting), SASL PLAIN and LOGIN,
PIPELINING, UIDL (format ``%08Xu%08Xv``), TOP. ``auth_failure_delay`` is 0, so wrong-password tests
are fast.

Requirements: the ``dovecot`` binary (Debian ``dovecot-pop3d``) and root (Dovecot refuses to
deliver as uid 0, so the Maildir belongs to the system user ``popflow-test``, created on first use
with ``useradd --system``). If Dovecot is missing or does not start, the fixture fails the test
when ``CI=true`` and skips it otherwise, with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest

MAIL_USER = "popflow-test"
"""The unprivileged system user that owns the test Maildir."""

_counter = itertools.count()


class DovecotUnavailable(RuntimeError):
    """Dovecot cannot be started here (missing binary, not root, bad config)."""


def unavailable(reason: str) -> None:
    """Fail under CI=true (a required service must work there), skip otherwise."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"Dovecot is required under CI=true: {reason}", pytrace=False)
    pytest.skip(f"Dovecot not available: {reason}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ensure_mail_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(MAIL_USER)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", MAIL_USER],
        capture_output=True, text=True, check=False,
    )
    try:  # another process may have created it concurrently
        return pwd.getpwnam(MAIL_USER)
    except KeyError:
        raise DovecotUnavailable(f"cannot create user {MAIL_USER}: {result.stderr.strip()}") from None


class _Introspection(BaseHTTPRequestHandler):
    """OAuth2 token introspection (RFC 7662 style) for Dovecot's oauth2 passdb."""

    tokens: dict[str, str] = {}

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        token = (form.get("token") or [""])[0]
        user = self.server.tokens.get(token)  # type: ignore[attr-defined]
        body = {"active": True, "username": user, "scope": "mail"} if user else {"active": False}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@dataclass
class DovecotServer:
    """A running private Dovecot; see the module docstring."""

    root: Path
    host: str
    port: int
    tls_port: int
    ca_file: Path
    username: str
    password: str
    oauth2_token: str
    maildir: Path
    log_path: Path
    uid: int
    gid: int
    imap_port: int = 0
    """Plain IMAP (offers STARTTLS); needs Debian's ``dovecot-imapd``."""
    imaps_port: int = 0
    """IMAP over implicit TLS."""
    _http: ThreadingHTTPServer | None = field(default=None, repr=False)
    _delivered: list[str] = field(default_factory=list, repr=False)

    @property
    def base_dir(self) -> Path:
        """Dovecot's base_dir (sockets, master.pid)."""
        return self.root / "run"

    def deliver(self, raw: bytes) -> str:
        """Put one message into ``Maildir/new`` (written to ``tmp/`` first); return its file name."""
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(_counter)}.popflow-test"
        tmp = self.maildir / "tmp" / name
        tmp.write_bytes(raw)
        os.chown(tmp, self.uid, self.gid)
        os.rename(tmp, self.maildir / "new" / name)
        self._delivered.append(name)
        return name

    def add_user(self, username: str, password: str) -> DovecotServer:
        """Add a mailbox user (Dovecot re-reads its passwd file); returns a view of that user's
        mailbox with the same methods (``deliver``, ``count``, ...) and the same server."""
        with open(self.root / "etc" / "passwd", "a") as passwd:
            passwd.write(f"{username}:{{PLAIN}}{password}\n")
        maildir = self.root / "mail" / username / "Maildir"
        for path in (maildir.parent, maildir, *(maildir / sub for sub in ("new", "cur", "tmp"))):
            path.mkdir(exist_ok=True)
            os.chown(path, self.uid, self.gid)
            path.chmod(0o700)
        return dataclasses.replace(self, username=username, password=password, maildir=maildir, _http=None,
                                   _delivered=[])

    def _files(self) -> list[Path]:
        return [p for sub in ("new", "cur") for p in (self.maildir / sub).iterdir() if p.is_file()]

    def count(self) -> int:
        """Messages still on the server (files in ``new/`` and ``cur/``)."""
        return len(self._files())

    def stored(self) -> list[bytes]:
        """The stored bytes of every message still on the server, in delivery order."""
        by_base = {p.name.split(":")[0]: p for p in self._files()}
        order = {name: index for index, name in enumerate(self._delivered)}
        names = sorted(by_base, key=lambda n: (order.get(n, len(order)), n))
        return [by_base[n].read_bytes() for n in names]

    def reset(self) -> None:
        """Empty the mailbox (do it between sessions, not during one)."""
        for sub in ("new", "cur", "tmp"):
            for path in (self.maildir / sub).iterdir():
                path.unlink(missing_ok=True)
        self._delivered.clear()

    def log(self) -> str:
        """The server's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def master_pid(self) -> int | None:
        """The PID of this instance's master process, from ``base_dir/master.pid``."""
        try:
            return int((self.base_dir / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, remove: bool = True) -> None:
        """Stop this instance (SIGTERM to its own master PID) and the introspection endpoint.

        ``remove`` (the default) also deletes its directory (config, certificates, Maildir, log).
        """
        pid = self.master_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


def _write_config(root: Path, *, port: int, tls_port: int, http_port: int, user: pwd.struct_passwd,
                  username: str, password: str, imap_port: int, imaps_port: int, extra_config: str = "") -> Path:
    import grp

    etc = root / "etc"
    (root / "run").mkdir()
    (root / "state").mkdir()
    passwd = etc / "passwd"
    passwd.write_text(f"{username}:{{PLAIN}}{password}\n")
    try:
        os.chown(passwd, 0, grp.getgrnam("dovecot").gr_gid)
        passwd.chmod(0o640)
    except KeyError:
        passwd.chmod(0o644)
    (etc / "dovecot-oauth2.conf.ext").write_text(
        "introspection_mode = post\n"
        f"introspection_url = http://127.0.0.1:{http_port}/introspect\n"
        "username_attribute = username\n"
        "active_attribute = active\n"
        "active_value = true\n"
        "force_introspection = yes\n"
        "timeout_msecs = 5000\n"
    )
    conf = etc / "dovecot.conf"
    conf.write_text(f"""# private test instance written by tests/support/dovecot.py
instance_name = popflow-test-{os.getpid()}-{port}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = pop3 imap
listen = 127.0.0.1
shutdown_clients = yes
first_valid_uid = 1
auth_failure_delay = 0

ssl = yes
ssl_cert = <{etc}/cert.pem
ssl_key = <{etc}/key.pem
ssl_min_protocol = TLSv1.2

disable_plaintext_auth = no
auth_mechanisms = plain login apop xoauth2 oauthbearer
passdb {{
  driver = passwd-file
  mechanisms = plain login apop
  args = scheme=PLAIN username_format=%u {passwd}
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {etc}/dovecot-oauth2.conf.ext
}}
userdb {{
  driver = static
  args = uid={user.pw_uid} gid={user.pw_gid} home={root}/mail/%u
}}
mail_location = maildir:~/Maildir
mail_max_userip_connections = 1000
pop3_uidl_format = %08Xu%08Xv

# No per-IP auth penalty: wrong-password tests must not slow down the tests after them.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}

service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
{extra_config}
""")
    return conf


def start_dovecot(username: str = "popflow", password: str | None = None, extra_config: str = "") -> DovecotServer:
    """Start a private Dovecot under a fresh directory in /tmp; raise DovecotUnavailable if it can't.

    ``extra_config`` is appended to its dovecot.conf (e.g. ``pop3_lock_session = yes``)."""
    binary = shutil.which("dovecot") or ("/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None)
    if binary is None:
        raise DovecotUnavailable("the dovecot binary is not installed (apt install dovecot-pop3d)")
    if os.geteuid() != 0:
        raise DovecotUnavailable("a private Dovecot with its own mail user needs root")
    try:
        import trustme
    except ImportError as exc:
        raise DovecotUnavailable("trustme is not installed") from exc
    user = _ensure_mail_user()
    password = password or f"pw-{os.urandom(6).hex()}"
    root = Path(tempfile.mkdtemp(prefix="popflow-dovecot-", dir="/tmp"))
    root.chmod(0o755)  # Dovecot's mail processes (uid popflow-test) must traverse it
    etc = root / "etc"
    etc.mkdir()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(etc / "key.pem"))
    (etc / "key.pem").chmod(0o600)
    cert.cert_chain_pems[0].write_to_path(str(etc / "cert.pem"))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(etc / "cert.pem"), append=True)
    ca_file = root / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    token = f"tok-{os.urandom(12).hex()}"
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Introspection)
    http.tokens = {token: username}  # type: ignore[attr-defined]
    threading.Thread(target=http.serve_forever, name="dovecot-introspection", daemon=True).start()

    maildir = root / "mail" / username / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for path in (root / "mail", root / "mail" / username, maildir, *(maildir / s for s in ("new", "cur", "tmp"))):
        os.chown(path, user.pw_uid, user.pw_gid)
        path.chmod(0o755 if path == root / "mail" else 0o700)

    port, tls_port, imap_port, imaps_port = free_port(), free_port(), free_port(), free_port()
    conf = _write_config(root, port=port, tls_port=tls_port, http_port=http.server_address[1], user=user,
                         username=username, password=password, imap_port=imap_port, imaps_port=imaps_port,
                         extra_config=extra_config)
    server = DovecotServer(root=root, host="127.0.0.1", port=port, tls_port=tls_port, ca_file=ca_file,
                           username=username, password=password, oauth2_token=token, maildir=maildir,
                           log_path=root / "dovecot.log", uid=user.pw_uid, gid=user.pw_gid, _http=http,
                           imap_port=imap_port, imaps_port=imaps_port)
    # The master daemonizes and its children inherit our stdio: never capture through pipes.
    startup_log = root / "startup.log"
    with open(startup_log, "wb") as out:
        code = subprocess.run([binary, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        output = startup_log.read_text(errors="replace").strip()
        server.stop()
        raise DovecotUnavailable(f"dovecot exited {code}: {output}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.master_pid() is not None and all(_accepts(p) for p in (port, tls_port, imap_port, imaps_port)):
            return server
        time.sleep(0.05)
    log_tail = server.log()[-2000:]
    server.stop()
    raise DovecotUnavailable(f"dovecot did not start listening; log:\n{log_tail}")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaps, as under a container's init, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


_SERVER: DovecotServer | None = None
_FAILURE: str | None = None


def _shared_server() -> DovecotServer:
    global _SERVER, _FAILURE
    if _SERVER is None and _FAILURE is None:
        try:
            _SERVER = start_dovecot()
        except DovecotUnavailable as exc:
            _FAILURE = str(exc)
    if _SERVER is None:
        unavailable(_FAILURE or "unknown error")
    assert _SERVER is not None
    return _SERVER


def _stop_shared() -> None:
    global _SERVER
    if _SERVER is not None:
        _SERVER.stop()
        _SERVER = None


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[DovecotServer]:
    """One private Dovecot for the whole session (shared by every module that imports this)."""
    server = _shared_server()
    try:
        yield server
    finally:
        _stop_shared()


@pytest.fixture
def dovecot(dovecot_server: DovecotServer) -> DovecotServer:
    """The session's Dovecot with an empty mailbox."""
    dovecot_server.reset()
    return dovecot_server
