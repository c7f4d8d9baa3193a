"""The servers of the interop suite: how each is started, filled and stopped (see interop/base.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from interop.base import Mode, Server, write_maildir
from interop.common import (
    STATE,
    MailUser,
    Unavailable,
    ensure_system_user,
    free_port,
    lib_env,
    run,
    stop_process,
    wait_listening,
)
from interop.cyrus import Cyrus, CyrusLoginDelay
from interop.messages import Message, mbox
from tests.support.inetd import InetdListener


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
        # solid-pop3d reads its config after dropping to spop3d: not from root's 0700 work folder.
        config = STATE / "spop3d.conf"
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
        """End every process of the namespace: couriertcpd leaves its process group, so killing
        the group alone leaves the STLS listener running."""
        if self._process is None:
            return
        try:
            namespace = os.readlink(f"/proc/{self._process.pid}/ns/mnt")
        except OSError:
            namespace = None
        if namespace is not None and namespace != os.readlink("/proc/self/ns/mnt"):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) == self._process.pid:
                    continue
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "ns/mnt") == namespace:
                        os.kill(int(entry.name), signal.SIGKILL)
        stop_process(self._process)


SERVERS: dict[str, type[Server]] = {cls.name: cls for cls in (Popa3d, Mailutils, Solid, Courier, Cyrus,
                                                              CyrusLoginDelay)}
