"""TLS client contexts are shared between polls, and a CA file replaced on disk is still honoured."""

from __future__ import annotations

import shutil
import socket
import ssl
from pathlib import Path

import pytest
import trustme

from popflow.sources.tls import make_ssl_context
from tests.support import dovecot as dovecot_support
from tests.support.dovecot import DovecotServer

dovecot_server = dovecot_support.dovecot_server


def handshake(server: DovecotServer, context: ssl.SSLContext) -> None:
    with socket.create_connection((server.host, server.tls_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=server.host) as tls:
        assert tls.recv(100).startswith(b"+OK")


def test_one_context_per_ca_file_until_the_file_changes(tmp_path: Path, dovecot_server: DovecotServer) -> None:
    ca_file = tmp_path / "ca.pem"
    shutil.copy(dovecot_server.ca_file, ca_file)
    first = make_ssl_context(ca_file)
    assert make_ssl_context(ca_file) is first  # loading the system CA store once, not per poll
    assert make_ssl_context(ca_file, verify=False) is not first
    handshake(dovecot_server, first)
    trustme.CA().cert_pem.write_to_path(str(ca_file))  # another CA: the server's certificate is no longer trusted
    replaced = make_ssl_context(ca_file)
    assert replaced is not first
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(dovecot_server, replaced)
