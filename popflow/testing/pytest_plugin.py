"""pytest fixtures for popflow plugin authors (loaded through the ``pytest11`` entry point).

* ``pop3_server`` — a started :class:`~popflow.testing.POP3TestServer` on a free loopback port
  with an empty mailbox (user ``user``, password ``pass``), stopped at teardown.
* ``pop3_server_factory`` — call it with the server's keyword arguments for anything else
  (messages, TLS, faults); every server it made is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from popflow.testing.pop3server import POP3TestServer


@pytest.fixture
def pop3_server_factory() -> Iterator[Callable[..., POP3TestServer]]:
    """Start POP3 test servers with any options; all are stopped when the test ends."""
    servers: list[POP3TestServer] = []

    def make(*args: Any, **kwargs: Any) -> POP3TestServer:
        server = POP3TestServer(*args, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def pop3_server(pop3_server_factory: Callable[..., POP3TestServer]) -> POP3TestServer:
    """A running POP3 test server with an empty mailbox; add messages with ``pop3_server.add(raw)``."""
    return pop3_server_factory()
