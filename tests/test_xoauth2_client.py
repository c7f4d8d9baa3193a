"""The real POP3 client's SASL XOAUTH2 login, against popflow's own test server.

Covers the providers' quirks the test server mimics: Microsoft 365 accepts only the two-step
form, Gmail both; a rejected token comes back as a base64 JSON challenge that the client must
answer with an empty line, then report — without ever showing the token.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from popflow.context import RuntimeContext
from popflow.errors import AuthenticationError
from popflow.sources.pop3 import Pop3Config, Pop3Source
from popflow.testing import POP3TestServer, make_message

USER = "someone@contoso.example"
TOKEN = "ya29.A0-secret-access-token"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for 127.0.0.1 and the CA file a client must trust."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    return context, ca_file


@pytest.fixture
def serve(ca: tuple[ssl.SSLContext, Path]) -> Iterator[Any]:
    """Start implicit-TLS servers holding one message; all are stopped at teardown."""
    servers: list[POP3TestServer] = []

    def start(**options: Any) -> POP3TestServer:
        options.setdefault("implicit_tls", True)
        options.setdefault("xoauth2_tokens", {TOKEN})
        server = POP3TestServer([make_message("hello")], username=USER, tls=ca[0], **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def source_for(server: POP3TestServer, ca_file: Path, tmp_path: Path, **options: Any) -> Pop3Source:
    """A ``pop3`` source logging in with XOAUTH2 to ``server``."""
    settings: dict[str, Any] = {"host": server.host, "port": server.port, "tls": "implicit", "ca_file": ca_file,
                                "username": USER, "auth": "xoauth2", "timeout": "5s"}
    settings.update(options)
    return Pop3Source("oauth", Pop3Config(**settings), RuntimeContext(data_dir=tmp_path, base_dir=tmp_path))


def token_command(token: str = TOKEN) -> str:
    return f"printf %s '{token}'"


def test_microsoft_style_two_step_login(serve: Any, ca: tuple[ssl.SSLContext, Path], tmp_path: Path) -> None:
    server = serve(style="microsoft")  # refuses the one-step form: success proves two steps
    source = source_for(server, ca[1], tmp_path, oauth2_token_command=token_command())
    with source.connect() as session:
        listings = session.list_messages()
        assert len(listings) == 1
        assert server.mailbox.locked
    assert server.stats.logins == 1 and server.stats.failed_logins == 0
    assert server.stats.commands["AUTH"] == 1
    assert server.wait_idle()


def test_gmail_style_login_with_token_file(serve: Any, ca: tuple[ssl.SSLContext, Path], tmp_path: Path) -> None:
    server = serve(style="gmail")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # a trailing newline, as `echo` or an editor leaves it
    source = source_for(server, ca[1], tmp_path, oauth2_token_file=token_file)
    with source.connect() as session:
        [listing] = session.list_messages()
        assert listing.uidl == server.uidls()[0]
    assert server.stats.logins == 1


def test_token_from_command_over_starttls(serve: Any, ca: tuple[ssl.SSLContext, Path], tmp_path: Path) -> None:
    server = serve(implicit_tls=False, starttls=True,
                   xoauth2_tokens=lambda user, token: (user, token) == ("user", "tok"))
    source = source_for(server, ca[1], tmp_path, tls="starttls", oauth2_token_command="printf tok",
                        username="user")
    with source.connect() as session:
        assert len(session.list_messages()) == 1
    assert server.stats.logins == 1


@pytest.mark.parametrize("style", ["gmail", "microsoft", "dovecot"])
def test_bad_token_is_reported_without_the_token(serve: Any, ca: tuple[ssl.SSLContext, Path], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture, style: str) -> None:
    server = serve(style=style)
    bad = "revoked-token-do-not-print"
    source = source_for(server, ca[1], tmp_path, oauth2_token_command=token_command(bad))
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthenticationError) as raised:
        source.connect()
    message = str(raised.value)
    assert '"status": "401"' in message and '"schemes": "bearer"' in message  # the decoded JSON challenge
    assert server.oauth_scope in message
    assert bad not in message and bad not in repr(raised.value.__cause__) and bad not in caplog.text
    assert server.stats.failed_logins == 1 and server.stats.logins == 0
    assert server.wait_idle()  # the client ended the session; the maildrop is free
    assert not server.mailbox.locked


def test_failing_token_command_is_an_authentication_error(serve: Any, ca: tuple[ssl.SSLContext, Path],
                                                          tmp_path: Path) -> None:
    server = serve()
    source = source_for(server, ca[1], tmp_path, oauth2_token_command="echo 'no refresh token' >&2; exit 3")
    with pytest.raises(AuthenticationError, match="status 3"):
        source.connect()
    assert server.stats.commands["AUTH"] == 0  # nothing was sent for a token we never got


def test_missing_token_file_is_an_authentication_error(serve: Any, ca: tuple[ssl.SSLContext, Path],
                                                       tmp_path: Path) -> None:
    server = serve()
    source = source_for(server, ca[1], tmp_path, oauth2_token_file=tmp_path / "absent")
    with pytest.raises(AuthenticationError, match="oauth2_token_file"):
        source.connect()
    assert server.stats.logins == 0
