"""Build small, valid RFC 5322 messages for tests and the demo mailbox."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid


def make_message(subject: str = "Test message", *, from_: str = "sender@example.com",
                 to: str | Iterable[str] = "recipient@example.com", body: str = "Hello.\n",
                 html: str | None = None, attachments: Iterable[tuple[str, bytes, str]] = (),
                 headers: dict[str, str] | None = None, date: datetime | None = None) -> bytes:
    """A raw message with CRLF line ends; ``attachments`` are ``(filename, data, "type/subtype")``."""
    message = EmailMessage()
    message["From"] = from_
    message["To"] = to if isinstance(to, str) else ", ".join(to)
    message["Subject"] = subject
    message["Date"] = format_datetime(date or datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="popflow.test")
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for filename, data, content_type in attachments:
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream", filename=filename)
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
