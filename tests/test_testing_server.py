"""popflow.testing: the in-process POP3 server, its mailbox semantics and its scripted faults."""

from __future__ import annotations

import base64
import hashlib
import json
import poplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from popflow.testing import FaultAction, FaultScript, POP3TestServer, make_message
from popflow.testing.mailbox import to_wire

pytest_plugins = ["pytester"]

MSG1 = b"From: a@example.com\r\nSubject: one\r\n\r\nfirst body\r\n"
MSG2 = b"From: b@example.com\r\nSubject: two\r\n\r\nsecond\r\nbody\r\n"
MSG3 = b"Subject: three\r\n\r\n" + b"x" * 5000 + b"\r\n"


class Wire:
    """A raw POP3 client: send exact bytes, read exact lines."""

    def __init__(self, server: POP3TestServer, context: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(server.address, timeout=5)
        self.sock = context.wrap_socket(sock, server_hostname="127.0.0.1") if context else sock
        self.reader = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self) -> str:
        return self.reader.readline().decode().rstrip("\r\n")

    def cmd(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def multi(self) -> list[bytes]:
        lines = []
        while (raw := self.reader.readline()) != b".\r\n":
            assert raw, "connection closed in a multi-line response"
            lines.append(raw)
        return lines

    def login(self, user: str = "user", password: str = "pass") -> str:
        assert self.cmd(f"USER {user}").startswith("+OK")
        return self.cmd(f"PASS {password}")

    def starttls(self, context: ssl.SSLContext) -> None:
        self.reader.close()
        self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.reader = self.sock.makefile("rb")

    def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        return self.reader.read()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def server() -> Iterator[POP3TestServer]:
    with POP3TestServer([MSG1, MSG2, MSG3]) as running:
        yield running


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


def xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


# -- greeting, CAPA, authentication ------------------------------------------


def test_greeting_has_apop_timestamp_only_when_apop_is_on() -> None:
    with POP3TestServer() as with_apop, POP3TestServer(apop=False) as without:
        first, second = Wire(with_apop), Wire(with_apop)
        assert first.greeting.startswith("+OK") and first.greeting.endswith("@popflow-testing>")
        assert first.greeting != second.greeting  # a fresh timestamp per connection
        assert "<" not in Wire(without).greeting


def test_capa_honours_flags(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    with POP3TestServer() as default:
        caps = [line.decode().strip() for line in _multi_after(Wire(default), "CAPA")]
    assert caps == ["TOP", "USER", "UIDL", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE",
                    "SASL PLAIN XOAUTH2", "IMPLEMENTATION popflow-testing"]
    with POP3TestServer(uidl=False, pipelining=False, sasl=(), tls=tls_contexts[0]) as bare:
        caps = [line.decode().strip() for line in _multi_after(Wire(bare), "CAPA")]
    assert "UIDL" not in caps and "PIPELINING" not in caps and "STLS" in caps
    assert not any(c.startswith("SASL") for c in caps)


def _multi_after(wire: Wire, command: str) -> list[bytes]:
    assert wire.cmd(command).startswith("+OK")
    return wire.multi()


def test_user_pass(server: POP3TestServer) -> None:
    wire = Wire(server)
    assert wire.login(password="wrong") == "-ERR [AUTH] Authentication failed."
    assert wire.cmd("PASS pass") == "-ERR USER first"
    assert wire.cmd("STAT") == "-ERR Unknown command"  # not before login
    assert wire.login().startswith("+OK")
    assert wire.cmd("STAT") == f"+OK 3 {sum(len(to_wire(m)) for m in (MSG1, MSG2, MSG3))}"
    assert server.stats.logins == 1 and server.stats.failed_logins == 1


def test_apop(server: POP3TestServer) -> None:
    wire = Wire(server)
    stamp = wire.greeting[wire.greeting.index("<"):]
    assert wire.cmd("APOP user 0123456789abcdef0123456789abcdef").startswith("-ERR [AUTH]")
    digest = hashlib.md5((stamp + "pass").encode()).hexdigest()
    assert wire.cmd(f"APOP user {digest}").startswith("+OK")


def test_auth_plain_initial_response_and_continuation(server: POP3TestServer) -> None:
    good = base64.b64encode(b"\0user\0pass").decode()
    bad = base64.b64encode(b"\0user\0nope").decode()
    wire = Wire(server)
    assert wire.cmd(f"AUTH PLAIN {bad}").startswith("-ERR [AUTH]")
    assert wire.cmd("AUTH PLAIN") == "+ "
    assert wire.cmd("*") == "-ERR Authentication aborted by client."
    assert wire.cmd("AUTH PLAIN") == "+ "
    assert wire.cmd(good).startswith("+OK")
    wire.cmd("QUIT")
    assert Wire(server).cmd(f"AUTH PLAIN {good}").startswith("+OK")


def test_auth_unknown_mechanism_and_listing() -> None:
    with POP3TestServer(sasl=("PLAIN",)) as server:
        wire = Wire(server)
        assert wire.cmd("AUTH XOAUTH2") == "-ERR [AUTH] Unsupported authentication mechanism."
        assert _multi_after(wire, "AUTH") == [b"PLAIN\r\n"]


def test_xoauth2_two_step_and_one_step() -> None:
    with POP3TestServer(xoauth2_tokens={"tok-1"}) as server:
        wire = Wire(server)
        assert wire.cmd("AUTH XOAUTH2") == "+ "
        assert wire.cmd(xoauth2("user", "tok-1")).startswith("+OK")
        wire.cmd("QUIT")
        assert Wire(server).cmd(f"AUTH XOAUTH2 {xoauth2('user', 'tok-1')}").startswith("+OK")


def test_xoauth2_bad_token_error_challenge() -> None:
    with POP3TestServer(xoauth2_tokens={"good"}) as server:
        wire = Wire(server)
        assert wire.cmd("AUTH XOAUTH2") == "+ "
        challenge = wire.cmd(xoauth2("user", "bad"))
        assert challenge.startswith("+ ")
        assert json.loads(base64.b64decode(challenge[2:])) == {
            "status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
        assert wire.cmd("") == "-ERR [AUTH] Authentication failed."
        # "*" aborts instead.
        assert wire.cmd(f"AUTH XOAUTH2 {xoauth2('user', 'bad')}").startswith("+ ")
        assert "aborted" in wire.cmd("*")
        assert wire.cmd(f"AUTH XOAUTH2 {xoauth2('someone-else', 'good')}").startswith("+ ")


def test_xoauth2_microsoft_style_needs_two_steps_and_callable_tokens() -> None:
    seen: list[tuple[str, str]] = []

    def check(user: str, token: str) -> bool:
        seen.append((user, token))
        return token == "ms-token"

    with POP3TestServer(xoauth2_tokens=check, style="microsoft") as server:
        wire = Wire(server)
        assert wire.cmd(f"AUTH XOAUTH2 {xoauth2('user', 'ms-token')}").startswith("-ERR")
        assert seen == []
        assert wire.cmd("AUTH XOAUTH2") == "+ "
        assert wire.cmd(xoauth2("a@b.example", "ms-token")).startswith("+OK")
        assert seen == [("a@b.example", "ms-token")]


def test_stls_upgrades_in_place(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls_contexts
    with POP3TestServer([MSG1], tls=server_ctx) as server:
        wire = Wire(server)
        assert "STLS" in [c.decode().strip() for c in _multi_after(wire, "CAPA")]
        assert wire.cmd("STLS").startswith("+OK")
        wire.starttls(client_ctx)
        assert "STLS" not in [c.decode().strip() for c in _multi_after(wire, "CAPA")]
        assert wire.cmd("STLS").startswith("-ERR")
        assert wire.login().startswith("+OK")
        assert wire.cmd("RETR 1").startswith("+OK")
        assert b"".join(wire.multi()) == MSG1
    with POP3TestServer() as plain:
        assert Wire(plain).cmd("STLS") == "-ERR STLS not supported"


def test_implicit_tls(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls_contexts
    with POP3TestServer([MSG1], tls=server_ctx, implicit_tls=True) as server:
        client = poplib.POP3_SSL(server.host, server.port, context=client_ctx, timeout=5)
        assert "STLS" not in client.capa()
        client.user("user")
        client.pass_("pass")
        assert client.retr(1)[1] == MSG1.rstrip(b"\r\n").split(b"\r\n")
        client.quit()


# -- transaction commands -------------------------------------------------------


def test_stat_list_uidl(server: POP3TestServer) -> None:
    wire = Wire(server)
    wire.login()
    sizes = [len(to_wire(m)) for m in (MSG1, MSG2, MSG3)]
    assert _multi_after(wire, "LIST") == [f"{n} {s}\r\n".encode() for n, s in enumerate(sizes, 1)]
    assert _multi_after(wire, "UIDL") == [b"1 00000001\r\n", b"2 00000002\r\n", b"3 00000003\r\n"]
    assert wire.cmd("LIST 2") == f"+OK 2 {sizes[1]}"
    assert wire.cmd("UIDL 3") == "+OK 3 00000003"
    assert wire.cmd("LIST 4") == "-ERR There's no message 4."
    assert wire.cmd("DELE 2").startswith("+OK")
    assert wire.cmd("LIST 2") == "-ERR Message is deleted."
    assert wire.cmd("STAT") == f"+OK 2 {sizes[0] + sizes[2]}"
    assert _multi_after(wire, "UIDL") == [b"1 00000001\r\n", b"3 00000003\r\n"]
    with POP3TestServer([MSG1], uidl=False) as no_uidl:
        other = Wire(no_uidl)
        other.login()
        assert other.cmd("UIDL").startswith("-ERR")


def test_retr_byte_stuffing_and_crlf_conversion() -> None:
    raw = b"Subject: dots\n\n.\n..two\n.leading\nmiddle . dot\nno final newline"
    with POP3TestServer([raw]) as server:
        wire = Wire(server)
        wire.login()
        assert wire.cmd("RETR 1") == f"+OK {len(to_wire(raw))} octets"
        lines = wire.multi()
        assert lines == [b"Subject: dots\r\n", b"\r\n", b"..\r\n", b"...two\r\n", b"..leading\r\n",
                         b"middle . dot\r\n", b"no final newline\r\n"]
        wire.cmd("QUIT")
        # poplib undoes the stuffing: the round trip gives back the message with CRLF line ends.
        client = poplib.POP3(server.host, server.port, timeout=5)
        client.user("user")
        client.pass_("pass")
        assert b"\r\n".join(client.retr(1)[1]) + b"\r\n" == to_wire(raw)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([b"", b".", b"..", b".x", b"x.", b"a\rb", b"\xff\x00", b"text"]), max_size=12)
       .map(b"\n".join), st.sampled_from([b"\n", b"\r\n"]))
def test_retr_round_trips_any_message(body: bytes, newline: bytes) -> None:
    raw = b"Subject: p" + newline + newline + body.replace(b"\n", newline)
    with POP3TestServer([raw]) as server:
        wire = Wire(server)
        wire.login()
        assert wire.cmd("RETR 1").startswith("+OK")
        unstuffed = b"".join(line[1:] if line.startswith(b".") else line for line in wire.multi())
    assert unstuffed == to_wire(raw)


def test_top(server: POP3TestServer) -> None:
    wire = Wire(server)
    wire.login()
    assert wire.cmd("TOP 2 0") == "+OK"
    assert wire.multi() == [b"From: b@example.com\r\n", b"Subject: two\r\n", b"\r\n"]
    wire.cmd("TOP 2 1")
    assert wire.multi()[-1] == b"second\r\n"
    wire.cmd("TOP 2 99")
    assert b"".join(wire.multi()) == MSG2
    assert wire.cmd("TOP 2 x") == "-ERR Invalid number of lines"
    assert server.stats.top == 3


def test_dele_applies_only_at_quit(server: POP3TestServer) -> None:
    wire = Wire(server)
    wire.login()
    wire.cmd("DELE 1")
    assert server.messages() == [MSG1, MSG2, MSG3]  # only marked
    assert wire.cmd("QUIT") == "+OK Logging out, 1 messages deleted."
    assert server.messages() == [MSG2, MSG3]
    assert server.uidls() == ["00000002", "00000003"]  # stable across sessions


def test_dropped_connection_applies_nothing(server: POP3TestServer) -> None:
    wire = Wire(server)
    wire.login()
    wire.cmd("DELE 1")
    wire.cmd("DELE 2")
    wire.close()
    assert server.wait_idle()
    assert server.messages() == [MSG1, MSG2, MSG3]
    assert Wire(server).login().startswith("+OK")  # the lock was released too


def test_rset_unmarks(server: POP3TestServer) -> None:
    wire = Wire(server)
    wire.login()
    wire.cmd("DELE 1")
    wire.cmd("DELE 3")
    assert wire.cmd("RSET").startswith("+OK")
    assert wire.cmd("STAT").startswith("+OK 3 ")
    wire.cmd("DELE 2")
    wire.cmd("QUIT")
    assert server.messages() == [MSG1, MSG3]


def test_concurrent_login_is_in_use(server: POP3TestServer) -> None:
    first, second = Wire(server), Wire(server)
    assert first.login().startswith("+OK")
    assert second.login() == "-ERR [IN-USE] Mailbox is locked by another POP3 session."
    first.cmd("QUIT")
    assert second.login().startswith("+OK")


def test_pipelined_commands_answer_in_order(server: POP3TestServer) -> None:
    wire = Wire(server)
    wire.sock.sendall(b"USER user\r\nPASS pass\r\nSTAT\r\nLIST\r\nRETR 1\r\nUIDL 2\r\nDELE 1\r\nNOOP\r\nQUIT\r\n")
    assert wire.line() == "+OK"
    assert wire.line().startswith("+OK Logged in")
    assert wire.line().startswith("+OK 3 ")
    assert wire.line() == "+OK" and len(wire.multi()) == 3
    assert wire.line().startswith("+OK") and b"".join(wire.multi()) == MSG1
    assert wire.line() == "+OK 2 00000002"
    assert wire.line().startswith("+OK") and wire.line() == "+OK"
    assert wire.line().startswith("+OK Logging out")
    assert server.messages() == [MSG2, MSG3]


def test_add_while_running_shows_in_the_next_session(server: POP3TestServer) -> None:
    wire = Wire(server)
    wire.login()
    assert server.add(b"Subject: late\r\n\r\nnew\r\n") == "00000004"
    assert server.add(b"Subject: named\r\n\r\n", uidl="custom-id") == "custom-id"
    assert wire.cmd("STAT").startswith("+OK 3 ")  # a session sees its login snapshot
    wire.cmd("QUIT")
    again = Wire(server)
    again.login()
    assert _multi_after(again, "UIDL")[-2:] == [b"4 00000004\r\n", b"5 custom-id\r\n"]
    with pytest.raises(ValueError):
        server.add(b"x", uidl="has space")


def test_serves_a_folder_and_a_maildir(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "b.eml").write_bytes(MSG2)
    (plain / "a.eml").write_bytes(MSG1)
    with POP3TestServer(plain) as server:
        assert server.messages() == [MSG1, MSG2]
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1700000000.1.host:2,S").write_bytes(MSG1)
    (maildir / "new" / "1700000001.2.host").write_bytes(MSG2)
    (maildir / "tmp" / "1700000002.3.host").write_bytes(MSG3)  # not delivered yet: not served
    with POP3TestServer(maildir) as server:
        assert server.messages() == [MSG1, MSG2]


def test_stop_is_quick_and_closes_clients(server: POP3TestServer) -> None:
    idle, logged_in = Wire(server), Wire(server)
    logged_in.login()
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1.0
    assert idle.rest() == b"" and logged_in.rest() == b""
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=1)


def test_restart_on_the_same_port_keeps_the_mailbox(server: POP3TestServer) -> None:
    wire = Wire(server)
    wire.login()
    wire.cmd("DELE 1")
    wire.cmd("QUIT")
    port = server.port
    server.stop()
    server.start()
    assert server.port == port
    again = Wire(server)
    again.login()
    assert again.cmd("STAT").startswith("+OK 2 ")


def test_drop_all_cuts_sessions_but_keeps_listening(server: POP3TestServer) -> None:
    wire = Wire(server)
    wire.login()
    wire.cmd("DELE 1")
    assert server.drop_all() == 1
    assert wire.rest() == b""
    assert server.wait_idle()
    assert len(server.messages()) == 3
    assert Wire(server).login().startswith("+OK")


def test_make_message_is_served_intact() -> None:
    raw = make_message("Order #42", to=["a@example.com", "b@example.com"], body="line\n.dot\n",
                       attachments=[("r.pdf", b"%PDF-1.4", "application/pdf")])
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    with POP3TestServer([raw]) as server:
        client = poplib.POP3(server.host, server.port, timeout=5)
        client.user("user")
        client.pass_("pass")
        assert b"\r\n".join(client.retr(1)[1]) + b"\r\n" == raw
        client.quit()


# -- faults ---------------------------------------------------------------------


def test_fault_drop_mid_retr_after_bytes() -> None:
    faults = FaultScript().on("RETR", 3, drop_after_bytes=1000).once()
    with POP3TestServer([MSG1, MSG2, MSG3], faults=faults) as server:
        wire = Wire(server)
        wire.login()
        wire.cmd("DELE 1")
        wire.sock.sendall(b"RETR 3\r\n")
        assert len(wire.rest()) == 1000
        assert server.wait_idle()
        assert len(server.messages()) == 3  # the DELE was not applied
        again = Wire(server)
        again.login()
        assert again.cmd("RETR 3").startswith("+OK")  # .once(): only the first RETR 3 is cut
        assert b"".join(again.multi()) == MSG3


def test_fault_drop_without_reply_and_with_reset() -> None:
    faults = FaultScript().on("STAT", drop=True, session=1).on("STAT", drop=True, reset=True, session=2)
    with POP3TestServer([MSG1], faults=faults) as server:
        wire = Wire(server)
        wire.login()
        wire.sock.sendall(b"STAT\r\n")
        assert wire.rest() == b""
        assert server.wait_idle()
        wire = Wire(server)
        wire.login()
        wire.sock.sendall(b"STAT\r\n")
        with pytest.raises(ConnectionResetError):
            wire.sock.recv(100)
        assert server.wait_idle()
        third = Wire(server)
        third.login()
        assert third.cmd("STAT").startswith("+OK 1 ")


def test_fault_err_times_and_nth() -> None:
    faults = (FaultScript().on("DELE", err="-ERR nope").times(2)
              .on("NOOP", nth=2, err="second noop fails"))
    with POP3TestServer([MSG1], faults=faults) as server:
        wire = Wire(server)
        wire.login()
        assert wire.cmd("DELE 1") == "-ERR nope"
        assert wire.cmd("DELE 1") == "-ERR nope"
        assert wire.cmd("DELE 1").startswith("+OK")
        assert [wire.cmd("NOOP") for _ in range(3)] == ["+OK", "-ERR second noop fails", "+OK"]


def test_fault_stall_then_answer() -> None:
    with POP3TestServer([MSG1], faults=FaultScript().on("RETR", stall=0.3)) as server:
        wire = Wire(server)
        wire.login()
        started = time.monotonic()
        assert wire.cmd("RETR 1").startswith("+OK")
        assert time.monotonic() - started >= 0.3


def test_fault_stall_forever_ends_at_stop() -> None:
    server = POP3TestServer([MSG1], faults=FaultScript().on("RETR", stall=True)).start()
    wire = Wire(server)
    wire.login()
    wire.sock.sendall(b"RETR 1\r\n")
    wire.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        wire.sock.recv(100)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1.0


def test_fault_in_use_on_login() -> None:
    with POP3TestServer([MSG1], faults=FaultScript().on("LOGIN", in_use=True).once()) as server:
        wire = Wire(server)
        assert wire.login() == "-ERR [IN-USE] maildrop locked"
        assert wire.login().startswith("+OK")


def test_fault_quit_fails_applies_nothing() -> None:
    with POP3TestServer([MSG1, MSG2], faults=FaultScript().on("QUIT", quit_fails=True).once()) as server:
        wire = Wire(server)
        wire.login()
        wire.cmd("DELE 1")
        assert wire.cmd("QUIT").startswith("-ERR")
        assert wire.rest() == b""
        assert server.wait_idle()
        assert server.messages() == [MSG1, MSG2]


def test_fault_before_command_callback() -> None:
    calls: list[tuple[int, str, list[str]]] = []

    def script(session: object, command: str, args: list[str]) -> FaultAction | None:
        calls.append((getattr(session, "number", 0), command, args))
        if command == "RETR" and getattr(session, "deleted", None):
            return FaultAction.error("no RETR after DELE")
        return None

    with POP3TestServer([MSG1, MSG2], faults=FaultScript(before_command=script)) as server:
        wire = Wire(server)
        wire.login()
        assert wire.cmd("RETR 2").startswith("+OK")
        wire.multi()
        wire.cmd("DELE 1")
        assert wire.cmd("RETR 2") == "-ERR no RETR after DELE"
    assert (1, "RETR", ["2"]) in calls


def test_fault_script_rejects_ambiguous_rules() -> None:
    with pytest.raises(ValueError):
        FaultScript().on("RETR", drop=True, err="x")
    with pytest.raises(ValueError):
        FaultScript().on("RETR")
    with pytest.raises(ValueError):
        FaultScript().once()


def test_concurrent_clients_are_served_in_parallel(server: POP3TestServer) -> None:
    results: list[str] = []

    def probe() -> None:
        wire = Wire(server)
        results.append(wire.cmd("CAPA"))
        wire.multi()
        wire.cmd("QUIT")

    threads = [threading.Thread(target=probe) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert results == ["+OK Capability list follows"] * 8
    assert server.stats.connections == 8


# -- the pytest plugin ------------------------------------------------------------


def test_pytest_plugin_fixture(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("from popflow.testing.pytest_plugin import pop3_server, pop3_server_factory\n")
    pytester.makepyfile("""
        import poplib

        def test_it(pop3_server, pop3_server_factory):
            assert pop3_server.messages() == []
            pop3_server.add(b"Subject: x\\r\\n\\r\\nhi\\r\\n")
            client = poplib.POP3(pop3_server.host, pop3_server.port, timeout=5)
            client.user("user")
            client.pass_("pass")
            assert client.stat()[0] == 1
            client.quit()
            other = pop3_server_factory([b"a"], username="me")
            assert other.port != pop3_server.port and other.messages() == [b"a"]
    """)
    pytester.runpytest_inprocess("-q").assert_outcomes(passed=1)
