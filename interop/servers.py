"""The servers of the interop suite: how each is started, filled and stopped.

A server class names its Debian package and the modes it supports (a :class:`Mode` is one way in:
an auth mechanism over plain, STLS or implicit TLS). To add one: subclass :class:`Server`, implement
``start`` / ``fill`` / ``stop``, and list it in :data:`SERVERS` (see docs/interop.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from interop.common import (
    PREFIX,
    STATE,
    MailUser,
    TestCA,
    Unavailable,
    ensure_system_user,
    free_port,
    lib_env,
    run,
    stop_process,
    wait_listening,
)
from interop.messages import Message, mbox
from tests.support.inetd import InetdListener


@dataclass(frozen=True)
class Mode:
    """One way into a server: ``auth`` (popflow's setting) over ``tls`` (none, starttls, implicit)."""

    auth: str
    tls: str = "none"
    check: str = "keep-delete"
    """What interop/check.py runs: ``keep-delete`` (keep twice, then delete) or ``login-delay``."""

    @property
    def name(self) -> str:
        name = self.auth if self.tls == "none" else f"{self.auth}+{'STLS' if self.tls == 'starttls' else 'TLS'}"
        return name if self.check == "keep-delete" else f"{name} {self.check}"


@dataclass
class Server:
    """A running server (after :meth:`start`): where it listens and whom it serves."""

    name: ClassVar[str]
    package: ClassVar[str]
    modes: ClassVar[list[Mode]]
    user: MailUser
    ca: TestCA
    work: Path
    port: int = 0
    tls_port: int = 0
    version: str = "?"
    notes: list[str] = field(default_factory=list)
    """Quirks or limits of this setup, for the matrix."""
    unservable: ClassVar[dict[str, str]] = {}
    """Messages (by name) this server refuses to serve at all, and what it does: the driver checks
    that claim with the full set first, then runs the modes without them."""

    def start(self) -> None:
        raise NotImplementedError

    def fill(self, messages: list[Message]) -> None:
        """Replace the maildrop with ``messages`` (only between sessions)."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def wait_idle(self) -> None:
        """Return once no session runs (a server may rewrite its store as a session ends)."""

    def prefix(self) -> Path:
        path = PREFIX / self.name
        if not (path / ".popflow-interop").is_file():
            raise Unavailable(f"not unpacked in {path} (run interop/fetch.sh {self.name})")
        return path

    def deb_version(self) -> str:
        for line in (self.prefix() / ".popflow-interop").read_text().splitlines():
            if line.startswith(self.package + "_"):
                return line.split("_")[1]
        return "?"

    def store(self) -> Path:
        """This server's mail folder (owned by the mail user)."""
        return self.user.own_dir(STATE / self.name, 0o700)


def write_maildir(user: MailUser, folder: Path, messages: list[Message]) -> None:
    """``folder`` as a fresh Maildir holding ``messages`` in ``new/``, in order."""
    if folder.exists():
        shutil.rmtree(folder)
    for sub in ("", "tmp", "new", "cur"):
        user.own_dir(folder / sub)
    for index, message in enumerate(messages):
        user.write(folder / "new" / f"{1796300000 + index}.P{index}Q1.interop", message.data)


class Popa3d(Server):
    """popa3d 1.0.3: inetd-only, mbox at /var/mail/<user>, PAM; run by tests/support/popa3d.py."""

    name = "popa3d"
    package = "popa3d"
    modes = [Mode("user")]
    _server: object = None

    def start(self) -> None:
        from tests.support.popa3d import Popa3dServer, Popa3dUnavailable

        try:
            server = Popa3dServer.start(self.work)
        except Popa3dUnavailable as exc:
            raise Unavailable(str(exc)) from None
        self._server = server
        self.port = server.port
        self.user = MailUser(server.username, server.password, server.uid, server.gid, self.user.home)
        deb = server.binary.parents[2] / ".popflow-deb"  # what scripts/setup-test-env.sh unpacked
        self.version = deb.read_text().split("_")[1] if deb.is_file() else run([str(server.binary), "-V"]).stdout

    def fill(self, messages: list[Message]) -> None:
        from tests.support.popa3d import Popa3dServer

        assert isinstance(self._server, Popa3dServer)
        self._server.fill([m.data for m in messages])

    def wait_idle(self) -> None:
        from tests.support.popa3d import Popa3dServer

        if isinstance(self._server, Popa3dServer):
            self._server.wait_idle()

    def stop(self) -> None:
        from tests.support.popa3d import Popa3dServer

        if isinstance(self._server, Popa3dServer):
            self._server.stop()


class Mailutils(Server):
    """GNU mailutils pop3d 3.15 in daemon mode: one port with STLS, one with implicit TLS; mbox.

    No SASL (Debian's build answers AUTH with "Not implemented" even with ``gsasl { enable yes; }``);
    APOP would need a popauth database (``popauth`` is in the ``mailutils`` package): not set up."""

    name = "mailutils"
    package = "mailutils-pop3d"
    modes = [Mode("user"), Mode("user", "starttls"), Mode("user", "implicit")]
    _process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        prefix = self.prefix()
        binary = prefix / "usr/sbin/pop3d"
        env = lib_env(prefix)
        version = run([str(binary), "--version"], env=env)
        if version.returncode != 0:
            raise Unavailable(f"pop3d --version exited {version.returncode}: {version.stderr.strip()[:200]}")
        self.version = version.stdout.splitlines()[0].split()[-1]
        self.port, self.tls_port = free_port(), free_port()
        store = self.store()
        config = self.work / "pop3d.conf"
        config.write_text(f"""
mode daemon;
foreground yes;
pidfile "{self.work}/pop3d.pid";
logging {{ syslog no; severity info; }};
auth {{ authentication system; authorization system; }};
mailbox {{ mailbox-pattern "{store}/${{user}}"; }};
tls-file-checks {{ key-file none; cert-file none; ca-file none; }};
tls {{ ssl-certificate-file "{self.ca.cert_file}"; ssl-key-file "{self.ca.key_file}"; }};
server 127.0.0.1:{self.port} {{ tls-mode stls; }};
server 127.0.0.1:{self.tls_port} {{ tls-mode connection; }};
""")
        log = open(self.work / "pop3d.log", "ab")  # noqa: SIM115 - the daemon keeps it open
        self._process = subprocess.Popen([str(binary), f"--config-file={config}"], stdout=log, stderr=log,
                                         env=env, start_new_session=True)
        wait_listening(self.port, process=self._process)
        wait_listening(self.tls_port, process=self._process)

    def fill(self, messages: list[Message]) -> None:
        self.wait_idle()
        self.user.write(self.store() / self.user.name, mbox(messages))

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)


class Solid(Server):
    """solid-pop3d 0.15 under an inetd (its standalone mode forks away); Maildir, PAM, APOP."""

    name = "solid"
    package = "solid-pop3d"
    modes = [Mode("user"), Mode("apop")]
    unservable = {"no-final-newline": "a Maildir file without a final newline fails the whole login"}
    _inetd: InetdListener | None = None

    def start(self) -> None:
        prefix = self.prefix()
        ensure_system_user("spop3d", Path("/var/lib/solid-pop3d"))  # its privilege-separation user
        binary = prefix / "usr/sbin/solid-pop3d"
        self.version = self.deb_version()
        store = self.store()
        config = self.work / "spop3d.conf"
        config.write_text(f"""<Global>
\tMailDropName\t"{store}/%s"
\tMailDropType\tmaildir
\tAllowAPOP\tyes
\tAddBulletins\tno
\tLogStatistics\tno
</Global>
""")
        self._inetd = InetdListener([str(binary), "-f", str(config)], lib_env(prefix),
                                    self.work / "solid.log").start()
        self.port = self._inetd.port
        self._apop_secret()

    def _apop_secret(self) -> None:
        """Give the user an APOP secret (its password) as ``pop_auth`` would: ``~/.spop3d`` holding
        ``APOPSecret <hex of each byte inverted>`` (pop_auth's "very weak" encryption; pop_auth
        itself reads from a terminal and truncates user names to 8 characters)."""
        home = self.user.own_dir(self.user.home, 0o700)
        secret = bytes(~byte & 0xFF for byte in self.user.password.encode()).hex()
        self.user.write(home / ".spop3d", f"APOPSecret {secret} \n".encode(), 0o600)

    def fill(self, messages: list[Message]) -> None:
        self.wait_idle()
        write_maildir(self.user, self.store() / self.user.name, messages)

    def wait_idle(self) -> None:
        if self._inetd is not None:
            self._inetd.wait_idle()

    def stop(self) -> None:
        if self._inetd is not None:
            self._inetd.stop()


class Courier(Server):
    """Courier POP3 1.0.16 (couriertcpd, authdaemond with PAM) in a private mount namespace
    (interop/courier.sh says why); Maildir; STLS on one port, implicit TLS on another."""

    name = "courier"
    package = "courier-pop"
    modes = [Mode("user"), Mode("plain"), Mode("user", "starttls"), Mode("plain", "implicit")]
    _process: subprocess.Popen[bytes] | None = None

    def maildir(self) -> Path:
        return self.store() / "Maildir"

    def start(self) -> None:
        prefix = self.prefix()
        self.version = self.deb_version()
        courier = ensure_system_user("courier", Path("/var/lib/courier"))
        # For STLS, courierpop3login starts couriertls as the user courier: it must read the key
        # (and reach it: the work folder is root's 0700 temporary folder).
        cert = STATE / "courier.pem"
        cert.write_bytes(self.ca.chain_file.read_bytes())
        os.chown(cert, courier.pw_uid, courier.pw_gid)
        cert.chmod(0o600)
        layer = self.work / "layer"
        (layer / "etc/courier").mkdir(parents=True, exist_ok=True)
        (layer / "etc/courier/authdaemonrc").write_text(
            'authmodulelist="authpam"\ndaemons=2\nauthdaemonvar=/run/courier/authdaemon\nDEBUG_LOGIN=0\n'
            'DEFAULTOPTIONS=""\nLOGGEROPTS=""\n')
        self.fill([])
        self.port, self.tls_port = free_port(), free_port()
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "PREFIX": str(prefix), "LAYER": str(layer),
               "PORT": str(self.port), "TLS_PORT": str(self.tls_port), "CERT": str(cert),
               "MAILDIR": str(self.maildir())}
        log = open(self.work / "courier.log", "ab")  # noqa: SIM115 - the daemons keep it open
        script = Path(__file__).with_name("courier.sh")
        self._process = subprocess.Popen(["unshare", "-m", "sh", str(script)], stdout=log, stderr=log, env=env,
                                         start_new_session=True)
        wait_listening(self.port, process=self._process)
        wait_listening(self.tls_port, process=self._process)

    def fill(self, messages: list[Message]) -> None:
        write_maildir(self.user, self.maildir(), messages)

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)


class Cyrus(Server):
    """Cyrus pop3d 3.6.1 under its own master (alternate imapd.conf and cyrus.conf, everything in a
    private folder owned by the user cyrus); passwords in a private sasldb; mail delivered with
    Cyrus's ``deliver`` over LMTP (mailbox created by ``autocreate_post``), emptied with ``ipurge``."""

    name = "cyrus"
    package = "cyrus-pop3d"
    modes = [Mode("user"), Mode("apop"), Mode("plain"), Mode("user", "starttls"), Mode("plain", "implicit")]
    login_delay: ClassVar[int] = 0
    """imapd.conf's popminpoll in minutes (CAPA ``LOGIN-DELAY`` is 60 times it)."""
    _process: subprocess.Popen[bytes] | None = None
    config: Path = Path("/nonexistent")

    def _bin(self, program: str) -> str:
        return str(self.prefix() / "usr/lib/cyrus/bin" / program)

    def _as_cyrus(self, command: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["runuser", "-u", "cyrus", "--", *command], input=stdin, capture_output=True,
                              env=lib_env(self.prefix()), timeout=60, check=False)

    def start(self) -> None:
        prefix = self.prefix()
        self.version = self.deb_version()
        cyrus = ensure_system_user("cyrus", Path("/var/lib/cyrus"))
        root = STATE / "cyrus-root"
        if root.exists():
            shutil.rmtree(root)
        for sub in ("config", "spool", "run", "run/proc", "run/lock", "run/socket", "tls"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for source, target in ((self.ca.cert_file, "tls/cert.pem"), (self.ca.key_file, "tls/key.pem")):
            (root / target).write_bytes(source.read_bytes())
        self.port, self.tls_port = free_port(), free_port()
        self.config = root / "imapd.conf"
        self.config.write_text(f"""configdirectory: {root}/config
partition-default: {root}/spool
defaultpartition: default
proc_path: {root}/run/proc
mboxname_lockpath: {root}/run/lock
lmtpsocket: {root}/run/socket/lmtp
idlesocket: {root}/run/socket/idle
notifysocket: {root}/run/socket/notify
servername: interop
admins: cyrus
allowplaintext: yes
allowapop: yes
popminpoll: {self.login_delay}
duplicatesuppression: 0
autocreate_post: 1
autocreate_quota: 0
lmtp_downcase_rcpt: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {root}/config/sasldb2
sasl_mech_list: PLAIN
tls_server_cert: {root}/tls/cert.pem
tls_server_key: {root}/tls/key.pem
syslog_prefix: popflow-interop-cyrus
""")
        # master does not hand its -C to the programs it starts: each command names the config.
        (root / "cyrus.conf").write_text(f"""START {{
  recover cmd="{self._bin('ctl_cyrusdb')} -C {self.config} -r"
}}
SERVICES {{
  pop3 cmd="{self._bin('pop3d')} -C {self.config}" listen="127.0.0.1:{self.port}" prefork=0 maxchild=20
  pop3s cmd="{self._bin('pop3d')} -C {self.config} -s" listen="127.0.0.1:{self.tls_port}" prefork=0 maxchild=20
  lmtpunix cmd="{self._bin('lmtpd')} -C {self.config}" listen="{root}/run/socket/lmtp" prefork=0 maxchild=5
}}
EVENTS {{
}}
""")
        run(["chown", "-R", f"{cyrus.pw_uid}:{cyrus.pw_gid}", str(root)])
        (root / "tls/key.pem").chmod(0o600)
        password = self._as_cyrus([str(prefix / "usr/sbin/saslpasswd2"), "-p", "-c", "-f",
                                   f"{root}/config/sasldb2", "-u", "interop", self.user.name],
                                  stdin=self.user.password.encode())
        if password.returncode != 0:
            raise Unavailable(f"saslpasswd2 failed: {password.stderr.decode(errors='replace').strip()}")
        log = open(self.work / "cyrus.log", "ab")  # noqa: SIM115 - the daemon keeps it open
        self._process = subprocess.Popen(
            [self._bin("master"), "-C", str(self.config), "-M", str(root / "cyrus.conf"), "-p",
             str(root / "run/master.pid")], stdout=log, stderr=log, env=lib_env(prefix), start_new_session=True)
        wait_listening(self.port, process=self._process)
        wait_listening(self.tls_port, process=self._process)

    def fill(self, messages: list[Message]) -> None:
        mailbox = f"user/{self.user.name}"  # unixhierarchysep is on by default in Cyrus 3
        self._as_cyrus([self._bin("ipurge"), "-C", str(self.config), "-f", "-b", "0", mailbox])
        for message in messages:
            result = self._as_cyrus([self._bin("deliver"), "-C", str(self.config), "-a", self.user.name,
                                     "-r", "sender@example.com", self.user.name], stdin=message.data)
            if result.returncode != 0:
                self.notes.append(f"deliver refused {message.name}: "
                                  f"{result.stdout.decode(errors='replace').strip()[:120]}")

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)


class CyrusLoginDelay(Cyrus):
    """Cyrus with Debian's default ``popminpoll: 1``: CAPA ``LOGIN-DELAY 60``, enforced."""

    name = "cyrus-login-delay"
    modes = [Mode("user", check="login-delay")]
    login_delay = 1

    def prefix(self) -> Path:
        return Cyrus(user=self.user, ca=self.ca, work=self.work).prefix()


SERVERS: dict[str, type[Server]] = {cls.name: cls for cls in (Popa3d, Mailutils, Solid, Courier, Cyrus,
                                                              CyrusLoginDelay)}
