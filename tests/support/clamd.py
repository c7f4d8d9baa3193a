"""A private clamd for tests: own config, own port, a hand-made signature database.

Official signature databases cannot be downloaded in CI, and clamd refuses to start without any,
so the database here holds two signatures for the EICAR test file: its MD5 (``.hdb``, matches a
decoded attachment that is exactly the 68-byte file) and its body (``.ndb``, matches the string
anywhere in a decoded part). clamd appends ``.UNOFFICIAL`` to such names: match on the prefix.

Needs the ``clamav-daemon`` package (``make test`` installs it). When clamd is missing or does not
start, the test is skipped on a developer machine and FAILS under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_MD5 = "44d88612fea8a8f36de82e1278abb02f"
SIGNATURE_PREFIX = "Eicar-Test-Signature"
STREAM_MAX_LENGTH = 1024 * 1024
"""clamd's ``StreamMaxLength`` in the private config: small, so the size-limit case is testable."""


def unavailable(reason: str) -> None:
    """Skip the test on a developer machine; fail it under CI=true (nothing is silently skipped there)."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"clamd unavailable under CI: {reason}", pytrace=False)
    pytest.skip(f"clamd unavailable: {reason} (make test installs clamav-daemon)")


def clamd_binary() -> str | None:
    """The clamd executable, if installed (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("clamd") or next(
        (path for path in ("/usr/sbin/clamd", "/usr/local/sbin/clamd") if os.access(path, os.X_OK)), None)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_signatures(directory: Path) -> None:
    """The hand-made database: EICAR by MD5 and by body."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "popflow-test.hdb").write_text(f"{EICAR_MD5}:{len(EICAR)}:{SIGNATURE_PREFIX}\n")
    (directory / "popflow-test.ndb").write_text(f"{SIGNATURE_PREFIX}-Body:0:*:{EICAR.hex()}\n")


@dataclass
class ClamdServer:
    """One private clamd process; :meth:`stop` and :meth:`start` again keep the same port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    stream_max_length: int = STREAM_MAX_LENGTH
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port`` for the plugin's ``address`` option."""
        return f"127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path:
        """The private unix socket (clamd listens on it and on TCP)."""
        return self.workdir / "clamd.sock"

    @property
    def log_path(self) -> Path:
        """clamd's log file, quoted when it fails to start."""
        return self.workdir / "clamd.log"

    def write_config(self) -> Path:
        """clamd.conf: foreground, loopback only, mail and archive scanning, private everything."""
        database = self.workdir / "db"
        write_signatures(database)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        config = self.workdir / "clamd.conf"
        config.write_text("\n".join([
            "Foreground yes",
            f"TCPSocket {self.port}",
            "TCPAddr 127.0.0.1",
            f"LocalSocket {self.socket_path}",
            "ScanMail yes",
            "ScanArchive yes",
            f"DatabaseDirectory {database}",
            f"TemporaryDirectory {self.workdir / 'tmp'}",
            f"StreamMaxLength {self.stream_max_length}",
            f"LogFile {self.log_path}",
            f"PidFile {self.workdir / 'clamd.pid'}",
            "SelfCheck 0",  # no database reload checks during a test run
            "",
        ]))
        return config

    def start(self, timeout: float = 60.0) -> None:
        """Start clamd and wait until it answers PING (it loads its database first)."""
        binary = clamd_binary()
        if binary is None:
            unavailable("no clamd binary (apt-get install clamav-daemon)")
            return
        config = self.write_config()
        self.socket_path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [binary, "--foreground", "-c", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in pytest must not reach clamd before teardown does
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                unavailable(f"clamd exited with {self.process.returncode}: {self._log_tail()}")
                return
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        unavailable(f"clamd did not answer PING within {timeout:g}s: {self._log_tail()}")

    def ping(self) -> bool:
        """True when clamd answers PONG on its TCP port."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"zPING\0")
                return sock.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop clamd (SIGTERM, then SIGKILL) and wait for it; the port is closed afterwards."""
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture
def clamd_private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    """A private clamd of the test's own, which the test may stop and start (e.g. to prove deferral)."""
    server = ClamdServer(tmp_path_factory.mktemp("clamd-private"))
    server.start()
    yield server
    server.stop()
