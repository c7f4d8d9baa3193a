"""The POP3 source against a real, private Dovecot: bytes, deletion, TLS, every auth method, pipelining."""

from __future__ import annotations

import logging
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from popflow.context import RuntimeContext
from popflow.errors import AuthenticationError, SourceConnectionError
from popflow.raw import RawMessage
from popflow.sources.pop3 import Pop3Config, Pop3Source
from popflow.sources.pop3_session import Pop3Session
from tests.support.dovecot import DovecotServer

pytestmark = pytest.mark.timeout(60)


def crlf(stored: bytes) -> bytes:
    """What a POP3 server hands out for stored bytes: every line ending CRLF, a final one added."""
    data = re.sub(rb"\r?\n", b"\r\n", stored)
    return data if not data or data.endswith(b"\r\n") else data + b"\r\n"


def source(server: DovecotServer, tmp_path: Path, **options: Any) -> Pop3Source:
    """A pop3 source for the test server: STARTTLS on the plain port, verified with the test CA."""
    settings: dict[str, Any] = {
        "host": server.host, "port": server.port, "tls": "starttls", "ca_file": str(server.ca_file),
        "username": server.username, "password": server.password,
    }
    settings.update(options)
    settings = {key: value for key, value in settings.items() if value is not None}
    return Pop3Source("test", Pop3Config.model_validate(settings), RuntimeContext(data_dir=tmp_path / "data"))


def connect(server: DovecotServer, tmp_path: Path, **options: Any) -> Pop3Session:
    """Connect a fresh source and return its session."""
    return source(server, tmp_path, **options).connect()


AWKWARD = [
    b"Subject: dots\r\n\r\n.\r\n..\r\n...\r\n.leading dot\r\n. space\r\nend\r\n.",
    b"Subject: long line\r\n\r\n" + b"0123456789" * 10_000 + b"\r\n",
    b"Subject: bare LF\nX-Note: stored with LF only\n\n.dot on a bare-LF line\nlast line\n",
    b"Subject: mixed\r\nX-A: 1\n\r\nbody \xff\xfe 8-bit\r\nno newline at the end",
    b"Subject: empty body\r\n\r\n",
    b"Subject: looks like a terminator\r\n\r\nline\r\n.\r\n\r\n.\r\nafter\r\n",
]


def test_list_uidl_and_retrieve_are_byte_exact(dovecot: DovecotServer, tmp_path: Path) -> None:
    for raw in AWKWARD:
        dovecot.deliver(raw)
    stored = dovecot.stored()
    with connect(dovecot, tmp_path) as session:
        assert session.info.message_count == len(AWKWARD)
        listings = session.list_messages()
        assert [item.number for item in listings] == list(range(1, len(AWKWARD) + 1))
        assert all(re.fullmatch(r"[0-9A-Fa-f]{16}", item.uidl) for item in listings)
        assert len({item.uidl for item in listings}) == len(AWKWARD)
        for listing, got in session.retrieve_many(listings):
            assert isinstance(got, RawMessage)
            expected = crlf(stored[listing.number - 1])
            assert got.read() == expected
            assert listing.size == len(re.sub(rb"\r?\n", b"\r\n", stored[listing.number - 1]))
        # retrieve() one by one gives the same bytes
        assert session.retrieve(listings[0]).read() == crlf(stored[0])


def test_uidls_are_stable_across_sessions(dovecot: DovecotServer, tmp_path: Path) -> None:
    dovecot.deliver(b"Subject: one\r\n\r\n1\r\n")
    dovecot.deliver(b"Subject: two\r\n\r\n2\r\n")
    with connect(dovecot, tmp_path) as first:
        before = first.list_messages()
    dovecot.deliver(b"Subject: three\r\n\r\n3\r\n")
    with connect(dovecot, tmp_path) as second:
        after = second.list_messages()
    assert [item.uidl for item in after[:2]] == [item.uidl for item in before]
    assert len(after) == 3


def test_delete_then_quit_empties_the_server(dovecot: DovecotServer, tmp_path: Path) -> None:
    for index in range(5):
        dovecot.deliver(b"Subject: %d\r\n\r\nbody\r\n" % index)
    session = connect(dovecot, tmp_path)
    listings = session.list_messages()
    assert session.delete(listings) == []
    session.close(commit=True)
    assert dovecot.count() == 0


def test_close_without_commit_keeps_everything(dovecot: DovecotServer, tmp_path: Path) -> None:
    for index in range(3):
        dovecot.deliver(b"Subject: %d\r\n\r\nbody\r\n" % index)
    session = connect(dovecot, tmp_path)
    session.delete(session.list_messages())
    session.close(commit=False)
    assert dovecot.count() == 3
    session.close(commit=True)  # already closed: a no-op, nothing is sent


def test_deleting_a_subset_keeps_the_rest(dovecot: DovecotServer, tmp_path: Path) -> None:
    for index in range(4):
        dovecot.deliver(b"Subject: keep-%d\r\n\r\nbody\r\n" % index)
    with connect(dovecot, tmp_path) as session:
        listings = session.list_messages()
        session.delete([listings[0], listings[2]])
    assert [m.split(b"\r\n")[0] for m in dovecot.stored()] == [b"Subject: keep-1", b"Subject: keep-3"]


def test_mail_arriving_during_a_session_waits_for_the_next(dovecot: DovecotServer, tmp_path: Path) -> None:
    dovecot.deliver(b"Subject: early\r\n\r\nx\r\n")
    with connect(dovecot, tmp_path) as session:
        listings = session.list_messages()
        dovecot.deliver(b"Subject: late\r\n\r\ny\r\n")
        session.delete(listings)
    assert [m.split(b"\r\n")[0] for m in dovecot.stored()] == [b"Subject: late"]


# -- pipelining ----------------------------------------------------------------------------------

def test_pipelined_and_lock_step_give_identical_bytes(dovecot: DovecotServer, tmp_path: Path) -> None:
    for index in range(40):
        dovecot.deliver(b"Subject: %d\r\n\r\n" % index + b".dot line\r\n" * (index * 37) + b"end\r\n")
    results = {}
    for pipelining in (True, False):
        with connect(dovecot, tmp_path, pipelining=pipelining, pipeline_window=4) as session:
            assert session.pipelining is pipelining
            assert "PIPELINING" in session.capabilities
            fetched = [raw for _, raw in session.retrieve_many(session.list_messages())]
            assert all(isinstance(raw, RawMessage) for raw in fetched)
            results[pipelining] = [raw.read() for raw in fetched if isinstance(raw, RawMessage)]
    assert results[True] == results[False]
    assert results[True] == [crlf(m) for m in dovecot.stored()]


def test_leaving_retrieve_many_early_keeps_the_session_usable(dovecot: DovecotServer, tmp_path: Path) -> None:
    for index in range(12):
        dovecot.deliver(b"Subject: %d\r\n\r\nbody\r\n" % index)
    with connect(dovecot, tmp_path, pipeline_window=8) as session:
        listings = session.list_messages()
        fetched = []
        for listing, _raw in session.retrieve_many(listings):
            fetched.append(listing)
            if len(fetched) == 3:
                break  # 5 more RETRs are in flight: they must be drained, not read as DELE replies
        assert session.delete(fetched) == []
        assert session.stat() == (9, sum(item.size for item in listings[3:]))  # deleted ones are hidden
    assert dovecot.count() == 9


def test_large_message_is_spooled_and_byte_exact(dovecot: DovecotServer, tmp_path: Path) -> None:
    line = b".stuffed " + b"y" * 90 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + line * (5 * 1024 * 1024 // len(line)) + b"\r\nend\r\n"
    dovecot.deliver(big)
    with connect(dovecot, tmp_path) as session:
        (listing,) = session.list_messages()
        ((_, raw),) = list(session.retrieve_many([listing]))
        assert isinstance(raw, RawMessage)
        assert raw.spooled
        # In this process's own spool folder (see popflow/spool.py), with its lock beside it.
        assert raw.path is not None and raw.path.parent.parent == tmp_path / "data" / "spool"
        assert (raw.path.parent / "lock").exists()
        assert raw.size == len(big) == listing.size
        assert raw.read() == big
        raw.discard()


# -- TLS -----------------------------------------------------------------------------------------

def test_implicit_tls_verified_with_ca_file(dovecot: DovecotServer, tmp_path: Path) -> None:
    dovecot.deliver(b"Subject: tls\r\n\r\nx\r\n")
    src = source(dovecot, tmp_path, tls="implicit", port=dovecot.tls_port)
    assert src.describe() == f"pop3s://{dovecot.username}@127.0.0.1:{dovecot.tls_port} (auth auto)"
    with src.connect() as session:
        assert session.wire.encrypted
        assert "STLS" not in session.capabilities  # already encrypted
        assert len(session.list_messages()) == 1


def test_starttls_verified_with_ca_file(dovecot: DovecotServer, tmp_path: Path) -> None:
    with connect(dovecot, tmp_path, tls="starttls") as session:
        assert session.wire.encrypted
        assert "STLS" not in session.capabilities  # CAPA asked again after the upgrade


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_unknown_ca_is_refused(dovecot: DovecotServer, tmp_path: Path, tls: str) -> None:
    port = dovecot.tls_port if tls == "implicit" else dovecot.port
    with pytest.raises(SourceConnectionError) as caught:
        connect(dovecot, tmp_path, tls=tls, port=port, ca_file=None)
    message = str(caught.value)
    assert "certificate verify failed" in message
    assert f"127.0.0.1:{port}" in message
    assert "\n" not in message


def test_tls_verify_false_connects_and_warns(dovecot: DovecotServer, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    src = source(dovecot, tmp_path, tls="implicit", port=dovecot.tls_port, ca_file=None, tls_verify=False)
    assert "NOT verified" in src.describe()
    for _ in range(2):
        with src.connect():
            pass
    warnings = [r for r in caplog.records if "NOT checked" in r.getMessage()]
    assert len(warnings) == 2


# -- authentication ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["user", "apop", "plain", "auto"])
def test_each_auth_method_logs_in(dovecot: DovecotServer, tmp_path: Path, method: str) -> None:
    dovecot.deliver(b"Subject: auth\r\n\r\nx\r\n")
    with connect(dovecot, tmp_path, auth=method) as session:
        assert session.auth_method == ("plain" if method == "auto" else method)
        assert session.info.message_count == 1
    expected = {"user": "PLAIN", "plain": "PLAIN", "auto": "PLAIN", "apop": "APOP"}[method]
    assert f"user=<{dovecot.username}>, method={expected}" in dovecot.log()


def test_auto_prefers_apop_on_an_unencrypted_connection(dovecot: DovecotServer, tmp_path: Path) -> None:
    with connect(dovecot, tmp_path, tls="none", allow_insecure=True, ca_file=None) as session:
        assert not session.wire.encrypted
        assert session.auth_method == "apop"  # the password itself never crosses the wire


def test_password_file(dovecot: DovecotServer, tmp_path: Path) -> None:
    secret = tmp_path / "pop3-password"
    secret.write_text(dovecot.password + "\n")
    with connect(dovecot, tmp_path, password=None, password_file=str(secret)) as session:
        assert session.auth_method == "plain"


@pytest.mark.parametrize("method", ["user", "apop", "plain"])
def test_wrong_password_is_an_authentication_error(dovecot: DovecotServer, tmp_path: Path, method: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-" + dovecot.password
    with pytest.raises(AuthenticationError) as caught:
        connect(dovecot, tmp_path, auth=method, password=wrong)
    assert f"{dovecot.username}@127.0.0.1" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in repr(caught.value)
    assert wrong not in caplog.text


def test_password_never_in_config_repr_or_describe(dovecot: DovecotServer, tmp_path: Path) -> None:
    src = source(dovecot, tmp_path)
    for text in (repr(src.config), str(src.config), src.describe(), repr(src), str(src.config.model_dump())):
        assert dovecot.password not in text


def test_xoauth2_with_token_command(dovecot: DovecotServer, tmp_path: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    command = f"{shlex.quote(sys.executable)} -c 'print(\"{dovecot.oauth2_token}\")'"
    with connect(dovecot, tmp_path, password=None, oauth2_token_command=command) as session:
        assert session.auth_method == "xoauth2"
    assert f"user=<{dovecot.username}>, method=XOAUTH2" in dovecot.log()
    assert dovecot.oauth2_token not in caplog.text


def test_xoauth2_with_token_file(dovecot: DovecotServer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(dovecot.oauth2_token + "\n")
    with connect(dovecot, tmp_path, password=None, auth="xoauth2", oauth2_token_file=str(token_file),
                 tls="implicit", port=dovecot.tls_port) as session:
        assert session.auth_method == "xoauth2"


def test_xoauth2_bad_token_reports_the_decoded_status(dovecot: DovecotServer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("revoked-token-123")
    with pytest.raises(AuthenticationError) as caught:
        connect(dovecot, tmp_path, password=None, auth="xoauth2", oauth2_token_file=str(token_file))
    message = str(caught.value)
    assert '"status": "401"' in message
    assert "revoked-token-123" not in message
    assert f"{dovecot.username}@127.0.0.1" in message


def test_failing_token_command_is_an_authentication_error(dovecot: DovecotServer, tmp_path: Path) -> None:
    with pytest.raises(AuthenticationError, match="exited with status 3: no refresh token"):
        connect(dovecot, tmp_path, password=None, oauth2_token_command="echo 'no refresh token' >&2; exit 3")


def test_top_header_digest_matches_the_retrieved_message(dovecot: DovecotServer, tmp_path: Path) -> None:
    """Crash recovery deletes a handled message unfetched only when TOP n 0 shows the same header
    block as the RETR it was handled from: on Dovecot the two agree for every awkward message."""
    from popflow.sources.keys import header_digest

    for raw in AWKWARD:
        dovecot.deliver(raw)
    with connect(dovecot, tmp_path) as session:
        listings = session.list_messages()
        fetched = {listing.number: header_digest(raw.read()) for listing, raw in session.retrieve_many(listings)
                   if isinstance(raw, RawMessage)}
        assert session.header_digests(listings) == fetched
