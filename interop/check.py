"""One server, one mode: keep twice then delete with popflow, compared with what the server serves.

The reference is what the server itself serves to a plain RETR (read byte for byte, dot-unstuffed,
before popflow polls): servers rewrite headers and line ends, so the file put in is not the answer.
"""

from __future__ import annotations

import os
import poplib
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from interop.messages import Message, from_quoted
from interop.servers import Mode, Server

POPFLOW = Path(os.environ.get("INTEROP_POPFLOW", Path(sys.executable).with_name("popflow")))
MAX_LINE = 1 << 20


@dataclass
class Served:
    """What the server serves in one session: UIDLs, LIST sizes and the RETR bytes of each message."""

    uidls: list[str]
    sizes: list[int]
    bodies: list[bytes]
    capa: list[str]


def connect(server: Server, mode: Mode) -> poplib.POP3:
    """A logged-in poplib session in ``mode`` (USER/PASS is used for the apop and plain modes too:
    the reference must not depend on the mechanism under test)."""
    context = ssl.create_default_context(cafile=str(server.ca.ca_file))
    client: poplib.POP3
    if mode.tls == "implicit":
        client = poplib.POP3_SSL("127.0.0.1", server.tls_port, timeout=30, context=context)
    else:
        client = poplib.POP3("127.0.0.1", server.port, timeout=30)
    try:
        if mode.tls == "starttls":
            client.stls(context=context)
        client.user(server.user.name)
        client.pass_(server.user.password)
    except BaseException:
        client.close()  # a refused login must not leave a session open (the server may lock)
        raise
    return client


def _retr_raw(client: poplib.POP3, number: int) -> bytes:
    """RETR ``number`` read line by line as sent: only the terminator and dot-stuffing removed."""
    client.sock.sendall(b"RETR %d\r\n" % number)
    status = client.file.readline(MAX_LINE)
    if not status.startswith(b"+OK"):
        raise poplib.error_proto(status.decode("latin-1").strip())
    out = bytearray()
    while True:
        line = client.file.readline(MAX_LINE)
        if not line:
            raise poplib.error_proto(f"connection closed inside RETR {number}")
        if line == b".\r\n":
            return bytes(out)
        out += line[1:] if line.startswith(b".") else line


def _command(client: poplib.POP3, line: bytes) -> bytes:
    client.sock.sendall(line + b"\r\n")
    return client.file.readline(MAX_LINE).rstrip(b"\r\n")


def served(server: Server, mode: Mode, utf8: bool = True) -> Served:
    """Everything the server serves now (the session ends without DELE). With ``utf8`` the session
    sends ``UTF8`` (RFC 6856) when CAPA offers it, as popflow does: the reference is what a client
    that enables it is served."""
    client = connect(server, mode)
    try:
        try:
            capa = [f"{k} {' '.join(v)}".strip() for k, v in client.capa().items()]
        except poplib.error_proto:
            capa = []
        if utf8 and any(line.split()[0] == "UTF8" for line in capa):
            answer = _command(client, b"UTF8")
            if not answer.startswith(b"+OK"):
                raise poplib.error_proto(f"UTF8 refused: {answer!r}")
        uidls = [line.decode().split()[1] for line in client.uidl()[1]]
        sizes = [int(line.split()[1]) for line in client.list()[1]]
        bodies = [_retr_raw(client, number) for number in range(1, len(uidls) + 1)]
    finally:
        client.quit()
    server.wait_idle()
    return Served(uidls, sizes, bodies, capa)


def lock_probe(server: Server, mode: Mode) -> str:
    """Whether a second session can log in while one is open (RFC 1939 wants the maildrop locked)."""
    first = connect(server, mode)
    try:
        try:
            second = connect(server, mode)
        except poplib.error_proto as exc:
            return f"locks the maildrop ({exc.args[0]!r:.60})"
        second.quit()
        return "no maildrop lock: a second session logs in while one is open"
    finally:
        first.quit()
        server.wait_idle()


def popflow_config(folder: Path, server: Server, mode: Mode, keep: bool, every: str = "60s") -> Path:
    port = server.tls_port if mode.tls == "implicit" else server.port
    source: dict[str, Any] = {
        "type": "pop3", "host": "127.0.0.1", "port": port, "tls": mode.tls, "auth": mode.auth,
        "username": server.user.name, "password": server.user.password, "timeout": "30s",
        "keep_on_server": keep, "every": every}
    if mode.tls == "none":
        source["allow_insecure"] = True
    else:
        source["ca_file"] = str(server.ca.ca_file)
    data = {"state": "sqlite:///state.db", "data_dir": "./data",
            "sources": {server.name: source},
            "sinks": {"mail": {"type": "folder", "path": "./mail", "layout": "maildir"}},
            "routes": [{"sinks": ["mail"]}]}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "popflow.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)  # it holds the password
    return path


def poll(config: Path) -> tuple[int, str]:
    """``popflow -v poll`` as a user runs it: exit code and output."""
    result = subprocess.run([str(POPFLOW), "-v", "poll", "-c", str(config)], capture_output=True, text=True,
                            timeout=300, cwd=config.parent, check=False)
    return result.returncode, result.stdout + result.stderr


def stored(folder: Path) -> list[bytes]:
    mail = folder / "mail"
    return [p.read_bytes() for p in sorted([*mail.glob("new/*"), *mail.glob("cur/*")])]


def compare(got: list[bytes], want: list[bytes], names: list[str]) -> list[str]:
    """What differs between stored and served, per message name; empty when identical as multisets."""
    have, expected = Counter(got), Counter(want)
    problems = []
    for index, body in enumerate(want):
        if have[body] < expected[body]:
            near = min((g for g in got if g not in expected), key=lambda g: abs(len(g) - len(body)), default=None)
            detail = ""
            if near is not None:
                offset = next((i for i, (a, b) in enumerate(zip(near, body, strict=False)) if a != b),
                              min(len(near), len(body)))
                detail = (f" (closest stored: {len(near)} bytes vs {len(body)} served, first difference at "
                          f"{offset}: {near[offset:offset + 24]!r} vs {body[offset:offset + 24]!r})")
            problems.append(f"{names[index]} missing{detail}")
        elif have[body] > expected[body]:
            problems.append(f"{names[index]} stored {have[body]} times")
    return problems


@dataclass
class Outcome:
    """One cell of the matrix."""

    mode: str
    ok: bool = True
    checks: int = 0
    problems: list[str] = field(default_factory=list)
    quirks: list[str] = field(default_factory=list)
    popflow_says: list[str] = field(default_factory=list)
    """What ``popflow check --connect`` reported about the server's policies."""

    def fail(self, text: str) -> None:
        self.ok = False
        self.problems.append(text)

    def expect(self, condition: bool, text: str) -> None:
        self.checks += 1
        if not condition:
            self.fail(text)


def _canonical(data: bytes) -> bytes:
    """The stored bytes as a well-behaved server serves them: every line end CRLF, a final one."""
    wire = re.sub(rb"\r?\n", b"\r\n", data)
    return wire if wire.endswith(b"\r\n") else wire + b"\r\n"


def _header(name: bytes, data: bytes) -> bytes | None:
    found = re.search(rb"^" + name + rb":[ \t]*([^\r\n]*)", data, re.M | re.I)
    return found.group(1) if found else None


def match(bodies: list[bytes], messages: list[Message]) -> list[Message | None]:
    """The stored message each served body is: servers list a Maildir in their own order. Matched by
    identical bytes, else Message-ID, else Subject (unique ones only)."""
    found: list[Message | None] = []
    for body in bodies:
        candidates = [m for m in messages if _canonical(m.data) == body]
        for name in (b"Message-ID", b"Subject"):
            if len(candidates) != 1 and _header(name, body) is not None:
                candidates = [m for m in messages if _header(name, m.data) == _header(name, body)]
        found.append(candidates[0] if len(candidates) == 1 else None)
    return found


def _names(found: list[str]) -> str:
    return ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")


def _served_quirks(ref: Served, messages: list[Message]) -> list[str]:
    quirks = []
    matched = match(ref.bodies, messages)
    if len(ref.bodies) != len(messages):
        lost = [m.name for m in messages if m not in matched]
        quirks.append(f"serves {len(ref.bodies)} messages for {len(messages)} stored (not served on its own: "
                      f"{_names(lost)})")
    pairs = [(m, body, size) for m, body, size in zip(matched, ref.bodies, ref.sizes, strict=False) if m is not None]
    odd_sizes = [m.name for m, body, size in pairs if size != len(body)]
    if odd_sizes:
        quirks.append(f"LIST size != RETR bytes for {_names(odd_sizes)}")
    if len(set(ref.uidls)) != len(ref.uidls):
        quirks.append(f"{len(ref.uidls) - len(set(ref.uidls))} duplicate UIDLs")
    crcr, ending, quoted, changed = [], [], [], []
    for message, body, _ in pairs:
        good = _canonical(message.data)
        naive = message.data.replace(b"\n", b"\r\n")
        if body == good:
            continue
        if body.rstrip(b"\r\n") == good.rstrip(b"\r\n"):
            ending.append(message.name)
        elif naive != good and body.rstrip(b"\r\n") == naive.rstrip(b"\r\n"):
            crcr.append(message.name)
        elif body == _canonical(from_quoted(message.data)):
            quoted.append(message.name)
        else:
            changed.append(message.name)
    if crcr:
        quirks.append(f"serves a stored CR LF as CR CR LF ({_names(crcr)})")
    if quoted:
        quirks.append(f"serves mbox >From quoting ({_names(quoted)})")
    if ending:
        quirks.append(f"other final line end for {_names(ending)}")
    if changed:
        quirks.append(f"rewrites {len(changed)}/{len(pairs)} ({_names(changed)})")
    return quirks


def check_connect(config: Path) -> tuple[int, str]:
    """``popflow check --connect``: what popflow reports about the server."""
    env = {**os.environ, "COLUMNS": "400"}  # rich wraps table cells to the terminal width
    result = subprocess.run([str(POPFLOW), "check", "--connect", "-c", str(config)], capture_output=True, text=True,
                            timeout=120, cwd=config.parent, check=False, env=env)
    return result.returncode, result.stdout + result.stderr


def run_login_delay(server: Server, mode: Mode, messages: list[Message], work: Path) -> Outcome:
    """A server enforcing LOGIN-DELAY: the reference, a wait, a keep poll that must store everything,
    then an immediate second poll that the server refuses: popflow must say why and lose nothing."""
    outcome = Outcome(mode.name)
    server.fill(messages)
    ref = served(server, mode)
    delay = next((int(c.split()[1]) for c in ref.capa if c.split()[0] == "LOGIN-DELAY" and c.split()[1:2]
                  and c.split()[1].isdigit()), 0)
    outcome.quirks.append(f"LOGIN-DELAY {delay} (enforced)")
    outcome.expect(delay > 0, "no LOGIN-DELAY announced")
    folder = work / mode.name.replace(" ", "-")
    shutil.rmtree(folder, ignore_errors=True)
    config = popflow_config(folder, server, mode, keep=True)
    time.sleep(delay + 1)
    code, output = check_connect(config)
    (folder / "check.log").write_text(output)
    outcome.expect(code == 0 and "LOGIN-DELAY" in output, f"check --connect ({code}) does not show LOGIN-DELAY: "
                   f"{_tail(output)}")
    time.sleep(delay + 1)
    code, output = poll(config)
    (folder / "poll1.log").write_text(output)
    outcome.expect(code == 0, f"poll 1 exited {code}: {_tail(output)}")
    for problem in compare(stored(folder), ref.bodies, [f"#{i + 1}" for i in range(len(ref.bodies))]):
        outcome.fail(f"poll 1: {problem}")
    code, output = poll(config)
    (folder / "poll2.log").write_text(output)
    outcome.expect("LOGIN-DELAY" in output and "wait" in output,
                   f"poll 2 (refused by the server) does not name LOGIN-DELAY: {_tail(output)}")
    outcome.expect("Traceback" not in output, f"poll 2 traceback: {_tail(output)}")
    outcome.expect(len(stored(folder)) == len(ref.bodies), f"poll 2: {len(stored(folder))} stored")
    outcome.quirks.append(f"a login too soon: popflow exit {code}, '{_refusal_line(output)}'")
    _run_schedule(server, mode, folder, delay, outcome)
    return outcome


def _run_schedule(server: Server, mode: Mode, folder: Path, delay: int, outcome: Outcome) -> None:
    """``popflow run`` with ``every: 15s`` for two LOGIN-DELAY periods: it must poll at the server's
    pace, so no poll is refused (issue 15: every poll within the minute failed)."""
    config = popflow_config(folder, server, mode, keep=True, every="15s")
    time.sleep(delay + 1)
    log_path = folder / "run.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(POPFLOW), "-v", "run", "-c", str(config)], stdout=log, stderr=log,
                                   cwd=folder, start_new_session=True)
        try:
            time.sleep(2 * delay + 10)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    output = log_path.read_text(errors="replace")
    polls = len(re.findall(r"poll \S+: fetched=", output))
    refused = output.count("[LOGIN-DELAY]")
    outcome.expect(refused == 0, f"popflow run (every: 15s): {refused} polls refused with [LOGIN-DELAY]")
    outcome.expect(2 <= polls <= 3, f"popflow run (every: 15s) polled {polls} times in {2 * delay + 10} s")
    outcome.quirks.append(f"popflow run every: 15s for {2 * delay + 10} s: {polls} polls, {refused} refused")


def _refusal_line(output: str) -> str:
    return next((line.strip()[-160:] for line in output.splitlines() if "LOGIN-DELAY" in line), "")


def run_mode(server: Server, mode: Mode, messages: list[Message], work: Path) -> Outcome:
    """keep, keep again (fetches nothing), then delete (a fresh state), each checked against RETR."""
    if mode.check == "login-delay":
        return run_login_delay(server, mode, messages, work)
    outcome = Outcome(mode.name)
    server.fill(messages)
    try:
        ref = served(server, mode)
        again = served(server, mode)
        if sorted(again.bodies) != sorted(ref.bodies):  # mailutils writes X-UID/Status back after the first session
            outcome.quirks.append("rewrites messages after the first session")
            ref = again
    except (poplib.error_proto, OSError) as exc:
        outcome.fail(f"reference session failed: {exc}")
        return outcome
    outcome.quirks += _served_quirks(ref, messages)
    names = [m.name if m else f"#{i + 1}" for i, m in enumerate(match(ref.bodies, messages))]
    outcome.quirks += [c for c in ref.capa if c.split()[0] in ("UTF8", "LOGIN-DELAY", "EXPIRE", "EXPIRENEVER")]
    if any(c.split()[0] == "UTF8" for c in ref.capa):
        plain = served(server, mode, utf8=False)
        substituted = [names[i] for i, body in enumerate(ref.bodies) if body not in plain.bodies]
        substituted = [_names(substituted)] if substituted else []
        if substituted:
            outcome.quirks.append(f"without UTF8 serves other bytes for {', '.join(substituted)}")
    keep_dir, delete_dir = work / f"{mode.name}-keep", work / f"{mode.name}-delete"
    for folder in (keep_dir, delete_dir):
        shutil.rmtree(folder, ignore_errors=True)
    config = popflow_config(keep_dir, server, mode, keep=True)
    code, output = check_connect(config)
    (keep_dir / "check.log").write_text(output)
    outcome.expect(code == 0, f"check --connect exited {code}: {_tail(output)}")
    if any(c.split()[0] == "UTF8" for c in ref.capa):
        outcome.expect("UTF8 on" in output, "check --connect does not say UTF8 is on")
    for policy in re.findall(r"(?:UTF8 on|LOGIN-DELAY \d+s|EXPIRE[ A-Z0-9]*:)[^;│]*", output):
        outcome.popflow_says.append(policy.strip())
    for attempt in (1, 2):
        code, output = poll(config)
        server.wait_idle()
        (keep_dir / f"poll{attempt}.log").write_text(output)
        outcome.expect(code == 0, f"keep poll {attempt} exited {code}: {_tail(output)}")
        outcome.expect("Traceback" not in output, f"keep poll {attempt} traceback: {_tail(output)}")
        for problem in compare(stored(keep_dir), ref.bodies, names):
            outcome.fail(f"keep {attempt}: {problem}")
        outcome.checks += 1
        outcome.expect(len(stored(keep_dir)) == len(ref.bodies),
                       f"keep {attempt}: {len(stored(keep_dir))} stored for {len(ref.bodies)} served")
    after = served(server, mode)
    outcome.expect(len(after.bodies) == len(ref.bodies), f"keep: {len(after.bodies)} left on the server")
    if sorted(after.bodies) != sorted(ref.bodies):
        outcome.quirks.append("rewrites messages between sessions")
    config = popflow_config(delete_dir, server, mode, keep=False)
    code, output = poll(config)
    server.wait_idle()
    (delete_dir / "poll.log").write_text(output)
    outcome.expect(code == 0, f"delete poll exited {code}: {_tail(output)}")
    for problem in compare(stored(delete_dir), after.bodies, names):
        outcome.fail(f"delete: {problem}")
    outcome.checks += 1
    left = served(server, mode)
    outcome.expect(not left.bodies, f"delete: {len(left.bodies)} left on the server")
    return outcome


def _tail(output: str, lines: int = 4) -> str:
    return " | ".join(line.strip() for line in output.strip().splitlines()[-lines:])
