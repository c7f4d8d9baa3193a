"""What every server of the interop suite shares: the mail user, the test CA, the accept loop.

Everything runs as root (the daemons authenticate system users and switch to them); nothing here is
installed system-wide except the system user ``popflow-interop`` (no shell, no home outside
``/var/lib/popflow-interop``) whose password is new at every run.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = Path(os.environ.get("INTEROP_PREFIX", "/opt/popflow-interop"))
"""Where interop/fetch.sh unpacks each server (``PREFIX/<server>``)."""
STATE = Path(os.environ.get("INTEROP_STATE", "/var/lib/popflow-interop"))
"""The mail stores, one folder per server, owned by the mail user."""
MAIL_USER = "popflow-interop"


class Unavailable(RuntimeError):
    """This server cannot be run here; the message says why (it goes into the matrix)."""


def run(command: list[str], *, stdin: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A command's result, never raising on a non-zero exit."""
    return subprocess.run(command, input=stdin, capture_output=True, text=True, check=False, timeout=timeout,
                          env=env)


def lib_env(prefix: Path, *extra_lib: str) -> dict[str, str]:
    """An environment that finds the libraries unpacked into ``prefix`` before the system's."""
    dirs = [prefix / "usr/lib/x86_64-linux-gnu", prefix / "lib/x86_64-linux-gnu", prefix / "usr/lib",
            *(prefix / sub for sub in extra_lib)]
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C",
            "LD_LIBRARY_PATH": ":".join(str(d) for d in dirs)}


def ensure_system_user(name: str, home: Path) -> pwd.struct_passwd:
    """The system user ``name`` (no shell, no home created), created if missing, as a package's
    postinst would (servers drop privileges to compiled-in user names)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        result = run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(home),
                      "--shell", "/usr/sbin/nologin", name])
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise Unavailable(f"cannot create user {name}: {result.stderr.strip()}") from None


@dataclass
class MailUser:
    """The system user every server authenticates (its password is random per run)."""

    name: str
    password: str
    uid: int
    gid: int
    home: Path

    @classmethod
    def ensure(cls) -> MailUser:
        home = STATE / "home"
        entry = ensure_system_user(MAIL_USER, home)
        password = f"pw-{secrets.token_hex(8)}"
        result = run(["chpasswd"], stdin=f"{MAIL_USER}:{password}\n")
        if result.returncode != 0:
            raise Unavailable(f"chpasswd failed: {result.stderr.strip()}")
        user = cls(MAIL_USER, password, entry.pw_uid, entry.pw_gid, home)
        user.own_dir(home, 0o700)
        return user

    def own_dir(self, path: Path, mode: int = 0o700) -> Path:
        """``path`` (created) owned by the user."""
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, self.uid, self.gid)
        path.chmod(mode)
        return path

    def write(self, path: Path, data: bytes, mode: int = 0o600) -> None:
        """Write ``data`` atomically as a file the user owns."""
        tmp = path.with_name(f".{path.name}.popflow-interop")
        tmp.write_bytes(data)
        os.chown(tmp, self.uid, self.gid)
        tmp.chmod(mode)
        os.rename(tmp, path)


@dataclass
class TestCA:
    """A throwaway CA and a server certificate for 127.0.0.1 (trustme), as PEM files in ``folder``."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    chain_file: Path
    """Key and certificate chain in one file (what Courier's TLS_CERTFILE wants)."""

    @classmethod
    def create(cls, folder: Path) -> TestCA:
        import trustme  # a dev dependency: only the interop driver needs it

        folder.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        made = cls(folder / "ca.pem", folder / "cert.pem", folder / "key.pem", folder / "chain.pem")
        ca.cert_pem.write_to_path(str(made.ca_file))
        chain = b"".join(pem.bytes() for pem in cert.cert_chain_pems)
        made.cert_file.write_bytes(chain)
        made.key_file.write_bytes(cert.private_key_pem.bytes())
        made.chain_file.write_bytes(cert.private_key_pem.bytes() + chain)
        for path in (made.key_file, made.chain_file):
            path.chmod(0o600)
        return made


def free_port() -> int:
    """A loopback port free right now (a daemon binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if process is not None and process.poll() is not None:
            raise Unavailable(f"the daemon exited with {process.returncode} before listening on {port}")
        if time.monotonic() > deadline:
            raise Unavailable(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")
        time.sleep(0.1)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the process group ``process`` leads, SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
