"""The POP3 wire layer and session against tiny scripted peers (cases Dovecot cannot show), and config.

The real-server tests are in tests/test_pop3_dovecot.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popflow.config import validate_component
from popflow.context import RuntimeContext
from popflow.errors import (
    AuthenticationError,
    ConfigError,
    DeferMessage,
    SourceConnectionError,
    SourceFatalError,
)
from popflow.plugins import make_plugin_manager
from popflow.raw import RawMessage
from popflow.sources.pop3 import Pop3Config, Pop3Source
from popflow.sources.pop3_auth import apop_digest, xoauth2_initial_response
from popflow.sources.pop3_listing import HEADER_KEY_PREFIX
from popflow.sources.pop3_wire import LONG_LINE_FLUSH, Pop3Wire

pytestmark = pytest.mark.timeout(60)


def stuff(message: bytes) -> bytes:
    """What a server sends for ``message`` (CRLF lines): dot-stuffed, terminated."""
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    lines = message.split(b"\r\n")
    body = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    return body + b".\r\n"


def wire_reading(stream: bytes, recv_size: int = 4096, timeout: float = 5) -> Pop3Wire:
    """A Pop3Wire whose peer has already sent ``stream`` and closed its side."""
    ours, theirs = socket.socketpair()

    def write() -> None:
        with theirs:
            theirs.sendall(stream)

    threading.Thread(target=write, daemon=True).start()  # a large stream would not fit the socket buffer
    return Pop3Wire(ours, "peer", 110, timeout, recv_size=recv_size)


# -- the multi-line reader -------------------------------------------------------------------

line_bytes = st.lists(st.sampled_from([b".", b"a", b" ", b"\r", b"..", b"\xff"]), max_size=12).map(b"".join)
messages = st.lists(line_bytes, max_size=15).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(messages, min_size=1, max_size=4), recv_size=st.integers(min_value=1, max_value=64))
def test_bodies_are_unstuffed_exactly_at_any_chunk_boundary(batch: list[bytes], recv_size: int) -> None:
    stream = b"".join(b"+OK %d octets\r\n" % len(m) + stuff(m) for m in batch) + b"+OK after\r\n"
    wire = wire_reading(stream, recv_size=recv_size)
    for message in batch:
        assert wire.read_response().ok
        assert wire.read_body() == message
    assert wire.read_response().text == "after"


def test_awkward_bodies() -> None:
    cases = [b"", b".\r\n", b"..\r\n", b"\r\n.\r\n", b"a\r\n.\r\n.\r\n", b"x\rz\r\n.y\r\n", b"\r\n\r\n"]
    stream = b"".join(b"+OK\r\n" + stuff(c) for c in cases)
    for recv_size in (1, 2, 3, 5, 4096):
        wire = wire_reading(stream, recv_size=recv_size)
        for case in cases:
            wire.read_response()
            assert wire.read_body() == case, (recv_size, case)


def test_a_huge_single_line_is_streamed_in_bounded_chunks() -> None:
    line = b"." + b"z" * (3 * 1024 * 1024) + b"\r\n"
    message = b"Subject: long\r\n\r\n" + line + b"tail\r\n"
    wire = wire_reading(b"+OK\r\n" + stuff(message), recv_size=64 * 1024)
    wire.read_response()
    chunks = list(wire.iter_body())
    assert b"".join(chunks) == message
    assert len(chunks) > 3
    assert max(len(c) for c in chunks) <= LONG_LINE_FLUSH + 64 * 1024


def test_bytes_are_not_decoded_or_reencoded() -> None:
    message = b"Subject: =?utf-8?q?x?=\r\n\r\n\x00\x80\xfe latin-1 \xe9\r\nbare\nlf\r\n"
    wire = wire_reading(b"+OK\r\n" + stuff(message))
    wire.read_response()
    assert wire.read_body() == message


def test_a_dropped_connection_mid_body_is_a_connection_error() -> None:
    wire = wire_reading(b"+OK\r\nSubject: cut\r\npartial")
    wire.read_response()
    with pytest.raises(SourceConnectionError, match="closed the connection"):
        wire.read_body()


def test_a_silent_server_times_out() -> None:
    ours, theirs = socket.socketpair()
    try:
        wire = Pop3Wire(ours, "slow.example", 110, timeout=0.2)
        with pytest.raises(SourceConnectionError, match=r"slow.example:110: timed out after 0.2s"):
            wire.read_response()
    finally:
        ours.close()
        theirs.close()


def test_responses_and_codes() -> None:
    wire = wire_reading(b"+OK hi\r\n-ERR [IN-USE] locked\r\n+ abc\r\nHELLO\r\n")
    assert wire.read_response().text == "hi"
    refused = wire.read_response()
    assert not refused.ok and refused.code == "IN-USE"
    assert wire.read_response().continuation
    with pytest.raises(SourceConnectionError, match="unexpected reply"):
        wire.read_response()


def test_auth_encodings() -> None:
    # RFC 1939's own example
    assert apop_digest(b"<1896.697170952@dbc.mtview.ca.us>", "tanstaaf") == "c4c9334bac560ecc979e58001b3e22fb"
    assert xoauth2_initial_response("u@example.com", "tok") == (
        b"dXNlcj11QGV4YW1wbGUuY29tAWF1dGg9QmVhcmVyIHRvawEB"
    )


# -- a tiny scripted server ------------------------------------------------------------------

class FakePop3:
    """A scripted POP3 server on 127.0.0.1 for one case at a time (not a general test server)."""

    def __init__(self, messages: list[bytes], *, capa: tuple[str, ...] = ("USER", "UIDL", "TOP", "PIPELINING"),
                 pass_reply: bytes = b"+OK logged in", refuse_retr: frozenset[int] = frozenset(),
                 refuse_dele: frozenset[int] = frozenset(), quit_reply: bytes = b"+OK bye",
                 stls_extra: bytes = b"") -> None:
        self.messages = messages
        self.capa = capa
        self.pass_reply = pass_reply
        self.refuse_retr = refuse_retr
        self.refuse_dele = refuse_dele
        self.quit_reply = quit_reply
        self.stls_extra = stls_extra
        self.commands: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        conn.sendall(b"+OK fake POP3 ready <1.2@fake>\r\n")
        for raw in reader:
            command = raw.rstrip(b"\r\n").decode()
            self.commands.append(command)
            verb, _, arg = command.partition(" ")
            verb = verb.upper()
            if verb == "CAPA":
                conn.sendall(b"+OK\r\n" + b"".join(c.encode() + b"\r\n" for c in self.capa) + b".\r\n")
            elif verb == "STLS" and "STLS" in self.capa:
                conn.sendall(b"+OK begin TLS\r\n" + self.stls_extra)
                return
            elif verb == "USER":
                conn.sendall(b"+OK\r\n")
            elif verb == "PASS":
                conn.sendall(self.pass_reply + b"\r\n")
            elif verb == "STAT":
                conn.sendall(b"+OK %d %d\r\n" % (len(self.messages), sum(map(len, self.messages))))
            elif verb == "LIST":
                conn.sendall(b"+OK\r\n" + b"".join(b"%d %d\r\n" % (i, len(m)) for i, m in self._numbered()) + b".\r\n")
            elif verb == "UIDL" and "UIDL" in self.capa:
                conn.sendall(b"+OK\r\n" + b"".join(b"%d uid-%d\r\n" % (i, i) for i, _ in self._numbered()) + b".\r\n")
            elif verb == "TOP" and "TOP" in self.capa:
                message = self.messages[int(arg.split()[0]) - 1]
                conn.sendall(b"+OK\r\n" + stuff(message.split(b"\r\n\r\n")[0] + b"\r\n\r\n"))
            elif verb == "RETR" and int(arg) not in self.refuse_retr:
                conn.sendall(b"+OK\r\n" + stuff(self.messages[int(arg) - 1]))
            elif verb == "DELE" and int(arg) not in self.refuse_dele:
                conn.sendall(b"+OK deleted\r\n")
            elif verb == "QUIT":
                conn.sendall(self.quit_reply + b"\r\n")
                return
            else:
                conn.sendall(b"-ERR no such thing\r\n")

    def _numbered(self) -> Iterator[tuple[int, bytes]]:
        return iter(enumerate(self.messages, start=1))

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def fake_server() -> Iterator[Any]:
    servers: list[FakePop3] = []

    def start(messages: list[bytes], **options: Any) -> FakePop3:
        servers.append(FakePop3(messages, **options))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def plain_source(port: int, tmp_path: Path, **options: Any) -> Pop3Source:
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": port, "tls": "none", "allow_insecure": True,
                                "username": "u", "password": "secret-pw", "auth": "user"}
    settings.update(options)
    return Pop3Source("fake", Pop3Config.model_validate(settings), RuntimeContext(data_dir=tmp_path))


MESSAGES = [b"Subject: %d\r\nMessage-ID: <%d@x>\r\n\r\nbody %d\r\n.dot\r\n" % (i, i, i) for i in range(1, 7)]


def test_starttls_without_stls_fails_and_never_sends_the_password(fake_server: Any, tmp_path: Path) -> None:
    server = fake_server(MESSAGES, capa=("USER", "UIDL"))
    src = plain_source(server.port, tmp_path, tls="starttls", allow_insecure=False)
    with pytest.raises(SourceFatalError, match="does not offer STLS"):
        src.connect()
    assert server.commands == ["CAPA"]


def test_plaintext_injected_after_stls_is_refused(fake_server: Any, tmp_path: Path) -> None:
    server = fake_server(MESSAGES, capa=("USER", "STLS"), stls_extra=b"+OK injected\r\n")
    src = plain_source(server.port, tmp_path, tls="starttls", allow_insecure=False)
    with pytest.raises(SourceConnectionError, match="before the TLS handshake"):
        src.connect()
    assert "USER u" not in server.commands


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refused_retr_defers_that_message_and_the_rest_continue(fake_server: Any, tmp_path: Path,
                                                                  pipelining: bool) -> None:
    server = fake_server(MESSAGES, refuse_retr=frozenset({2, 5}))
    with plain_source(server.port, tmp_path, pipelining=pipelining, pipeline_window=2).connect() as session:
        assert session.pipelining is pipelining
        results = list(session.retrieve_many(session.list_messages()))
        assert [listing.number for listing, _ in results] == [1, 2, 3, 4, 5, 6]
        for listing, got in results:
            if listing.number in (2, 5):
                assert isinstance(got, DeferMessage)
                assert f"uid-{listing.number}" in str(got)
            else:
                assert isinstance(got, RawMessage)
                assert got.read() == MESSAGES[listing.number - 1]
        with pytest.raises(DeferMessage):
            session.retrieve(results[1][0])


def test_a_refused_dele_is_reported_not_raised(fake_server: Any, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    server = fake_server(MESSAGES, refuse_dele=frozenset({3}))
    with plain_source(server.port, tmp_path).connect() as session:
        listings = session.list_messages()
        failed = session.delete(listings)
    assert [listing.number for listing in failed] == [3]
    assert "DELE 3 (uid-3) refused" in caplog.text
    assert server.commands[-1] == "QUIT"


def test_without_uidl_messages_are_keyed_by_their_headers(fake_server: Any, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    server = fake_server(MESSAGES, capa=("USER", "TOP", "PIPELINING"))
    with plain_source(server.port, tmp_path).connect() as session:
        listings = session.list_messages()
    head = MESSAGES[0].split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert listings[0].uidl == HEADER_KEY_PREFIX + hashlib.sha256(head).hexdigest()
    assert len({listing.uidl for listing in listings}) == len(MESSAGES)
    assert "does not support UIDL" in caplog.text
    assert any("UIDL" in note for note in session.info.notes)


def test_without_uidl_and_top_the_source_stops(fake_server: Any, tmp_path: Path) -> None:
    server = fake_server(MESSAGES, capa=("USER",))
    with plain_source(server.port, tmp_path).connect() as session, \
            pytest.raises(SourceFatalError, match="neither UIDL nor TOP"):
        session.list_messages()


def test_a_locked_maildrop_is_fatal_not_bad_credentials(fake_server: Any, tmp_path: Path) -> None:
    server = fake_server(MESSAGES, pass_reply=b"-ERR [IN-USE] Mailbox is locked by another POP3 session")
    with pytest.raises(SourceFatalError, match="maildrop locked") as caught:
        plain_source(server.port, tmp_path).connect()
    assert not isinstance(caught.value, AuthenticationError)
    assert "u@127.0.0.1" in str(caught.value)


def test_bad_credentials_never_show_the_password(fake_server: Any, tmp_path: Path) -> None:
    server = fake_server(MESSAGES, pass_reply=b"-ERR [AUTH] bad password secret-pw")  # a server that echoes
    with pytest.raises(AuthenticationError) as caught:
        plain_source(server.port, tmp_path).connect()
    assert "secret-pw" not in str(caught.value)
    assert "u@127.0.0.1" in str(caught.value)


def test_a_failed_quit_is_a_connection_error(fake_server: Any, tmp_path: Path) -> None:
    server = fake_server(MESSAGES, quit_reply=b"-ERR could not expunge")
    session = plain_source(server.port, tmp_path).connect()
    session.delete(session.list_messages())
    with pytest.raises(SourceConnectionError, match="deletions may not have been applied"):
        session.close(commit=True)


def test_close_without_commit_sends_no_quit(fake_server: Any, tmp_path: Path) -> None:
    server = fake_server(MESSAGES)
    session = plain_source(server.port, tmp_path).connect()
    session.delete(session.list_messages()[:1])
    session.close(commit=False)
    assert "QUIT" not in server.commands


def test_nothing_listening_is_a_connection_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SourceConnectionError, match=f"cannot connect to 127.0.0.1:{port}"):
        plain_source(port, tmp_path).connect()


def test_auto_uses_apop_rather_than_a_cleartext_password_without_tls(
        fake_server: Any, tmp_path: Path) -> None:
    # Over an unencrypted connection with allow_insecure, auto prefers APOP when offered.
    server = fake_server(MESSAGES, capa=("USER", "UIDL"))
    src = plain_source(server.port, tmp_path, auth="auto")
    with pytest.raises(AuthenticationError):  # the fake server knows no APOP
        src.connect()
    assert server.commands[-1].startswith("APOP u ")


# -- config ----------------------------------------------------------------------------------

BASE = {"host": "pop.example.com", "username": "me@example.com", "password": "hunter2-secret"}


def test_defaults() -> None:
    config = Pop3Config.model_validate(BASE)
    assert (config.tls, config.port, config.tls_verify) == ("implicit", 995, True)
    assert (config.auth, config.timeout) == ("auto", 30)
    assert config.pipelining and config.pipeline_window == 256
    assert Pop3Config.model_validate({**BASE, "tls": "starttls"}).port == 110
    assert Pop3Config.model_validate({**BASE, "timeout": "2m"}).timeout == 120


@pytest.mark.parametrize(("extra", "problem"), [
    ({"tls": "none"}, "allow_insecure"),
    ({"password_file": "/run/pw"}, "either 'password' or 'password_file'"),
    ({"password": None}, "needs 'password' or 'password_file'"),
    ({"password": ""}, "password is empty"),
    ({"auth": "xoauth2"}, "needs 'oauth2_token_command' or 'oauth2_token_file'"),
    ({"auth": "xoauth2", "password": None, "oauth2_token_file": "/t", "oauth2_token_command": "x"}, "not both"),
    ({"auth": "user", "oauth2_token_command": "get-token"}, "only used with auth: xoauth2"),
    ({"port": 0}, "greater than or equal to 1"),
    ({"tls": "ssl"}, "'implicit', 'starttls' or 'none'"),
    ({"typo_key": 1}, "unknown key"),
])
def test_invalid_configs_are_explained(extra: dict[str, Any], problem: str) -> None:
    options = {key: value for key, value in {**BASE, **extra}.items() if value is not None}
    with pytest.raises(ConfigError) as caught:
        validate_component(Pop3Config, options, kind="sources", name="support", file="popflow.yaml")
    assert problem in str(caught.value)
    assert "hunter2-secret" not in str(caught.value)


def test_secrets_stay_out_of_repr_and_describe(tmp_path: Path) -> None:
    config = Pop3Config.model_validate({**BASE, "tls": "starttls"})
    src = Pop3Source("support", config, RuntimeContext(data_dir=tmp_path))
    for text in (repr(config), str(config), src.describe(), repr(src)):
        assert "hunter2-secret" not in text
    assert src.describe() == "pop3://me@example.com@pop.example.com:110 (starttls, auth auto)"


def test_the_plugin_registers_the_pop3_type() -> None:
    pm = make_plugin_manager(load_entry_points=False)
    assert pm.registry.source_type("pop3") is Pop3Source


def test_token_command_output_is_stripped_and_failures_are_explained(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    from popflow.sources.pop3_auth import run_token_command

    caplog.set_level(logging.DEBUG)
    assert run_token_command("printf '  tok-123\\n'", "u@h") == "tok-123"
    assert run_token_command(["/bin/echo", "tok-456"], "u@h") == "tok-456"
    with pytest.raises(AuthenticationError, match="printed no token"):
        run_token_command("true", "u@h")
    assert "tok-123" not in caplog.text


def test_a_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mail.example.org").configure_cert(server_context)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError), server_context.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"+OK ready\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        src = plain_source(listener.getsockname()[1], tmp_path, tls="implicit", ca_file=str(ca_file),
                           allow_insecure=False)
        with pytest.raises(SourceConnectionError, match="certificate verify failed: IP address mismatch"):
            src.connect()
    finally:
        listener.close()
