"""Cyrus pop3d for the interop suite: its own master, sasldb, LMTP delivery (see docs/interop.md)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

from interop.base import Mode, Server
from interop.common import STATE, Unavailable, ensure_system_user, free_port, lib_env, run, stop_process, wait_listening
from interop.messages import Message


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
