"""popflow's test kit: an in-process POP3 server with scripted faults, for tests and the demo.

Plugin authors get the ``pop3_server`` pytest fixture automatically once popflow is installed
(``popflow.testing.pytest_plugin``)::

    import poplib

    def test_my_plugin(pop3_server):
        pop3_server.add(b"Subject: hi\\r\\n\\r\\nhello\\r\\n")
        client = poplib.POP3(pop3_server.host, pop3_server.port)
        client.user(pop3_server.username)
        client.pass_(pop3_server.password)
        ...
"""

from popflow.testing.faults import FaultAction, FaultRule, FaultScript
from popflow.testing.mailbox import Mailbox, StoredMessage
from popflow.testing.pop3server import POP3TestServer, ServerStats
from popflow.testing.samples import make_message

__all__ = ["FaultAction", "FaultRule", "FaultScript", "Mailbox", "POP3TestServer", "ServerStats", "StoredMessage",
           "make_message"]
