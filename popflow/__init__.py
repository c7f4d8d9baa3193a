"""popflow: turn POP3 mailboxes into data pipelines.

Plugin authors need only this package root::

    from popflow import hookimpl, Message
"""

from popflow.hookspecs import hookimpl
from popflow.message import Address, Attachment, Message
from popflow.verdicts import FilterDecision, ScanVerdict

__version__ = "0.1.0"

__all__ = ["Address", "Attachment", "FilterDecision", "Message", "ScanVerdict", "__version__", "hookimpl"]
