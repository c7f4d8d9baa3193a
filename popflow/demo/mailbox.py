"""The demo's sample mailbox: support requests, order confirmations, a newsletter and some broken mail.

Deterministic (a fixed seed and fixed dates), so every run of ``popflow demo`` and every test sees
the same messages. The malformed ones are what real mailboxes hold now and then; the parser repairs
them and records ``defects`` instead of failing.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

DOMAIN = "demo.example"
SUPPORT = Address("Example Support", "support", DOMAIN)
ORDERS = Address("Example Orders", "orders", DOMAIN)
SHOP = Address("Example Shop", "shop", "store.example")
NEWSLETTER_DOMAIN = f"newsletter.{DOMAIN}"
"""The demo config drops everything from ``*@newsletter.demo.example``."""

_START = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)

# (display name, mailbox, domain): non-ASCII names become RFC 2047 encoded words on the wire.
_CUSTOMERS = [
    ("Zoë Müller", "zoe", "mail.example"), ("José Ñúñez", "jose", "correo.example"),
    ("Ольга Петрова", "olga", "pochta.example"), ("田中 太郎", "taro", "mail.example.jp"),
    ("Chris O'Brien", "chris", "example.org"), ("Amélie Dubois", "amelie", "courriel.example"),
    ("Sam Lee", "sam", "example.net"), ("Łukasz Wójcik", "lukasz", "poczta.example"),
]
_SUPPORT_SUBJECTS = [
    "Cannot log in since the update", "URGENT: invoice shows the wrong amount",
    "Passwort zurücksetzen funktioniert nicht",
    "Ошибка при оплате заказа", "請求書の再発行をお願いします", "Question about delivery times",
    "Export to CSV is empty", "ASAP: account locked", "Café locations — opening hours?",
    "Feature request: dark mode", "Réclamation : colis endommagé", "App crashes on start",
]
_PRODUCTS = [("Espresso beans 1 kg", 18.90), ("Pour-over kettle", 49.00), ("Ceramic mug", 12.50),
             ("Grinder burr set", 34.00), ("Paper filters (100)", 4.20), ("Milk jug 600 ml", 15.75)]


def _address(customer: tuple[str, str, str]) -> Address:
    return Address(customer[0], customer[1], customer[2])


def _base(index: int, sender: Address, to: Address, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject  # non-ASCII subjects are RFC 2047 UTF-8 encoded by the policy
    msg["Date"] = format_datetime(_START + timedelta(minutes=37 * index))
    msg["Message-ID"] = f"<demo-{index:03d}@{DOMAIN}>"
    return msg


def _wire(msg: EmailMessage, index: int) -> bytes:
    """The message as sent over SMTP (CRLF), with fixed MIME boundaries so every run is identical."""
    for number, part in enumerate(msg.walk()):
        if part.is_multipart():
            part.set_boundary(f"=_demo_{index:03d}_{number}")
    return msg.as_bytes(policy=SMTP)


def _pdf(title: str) -> bytes:
    """A tiny PDF-looking document (enough for a content type, a size and a checksum)."""
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n% " + title.encode() +
            b"\ntrailer << /Root 1 0 R >>\n%%EOF\n")


def support_request(index: int, rng: random.Random) -> bytes:
    """A customer writing to support; some attach a log or a screenshot-like CSV."""
    k = index // 2  # support mail has the even indexes; k walks every customer and subject
    customer = _CUSTOMERS[k % len(_CUSTOMERS)]
    subject = _SUPPORT_SUBJECTS[k % len(_SUPPORT_SUBJECTS)]
    msg = _base(index, _address(customer), SUPPORT, subject)
    msg.set_content(f"Hello,\n\n{subject}. Ticket reference T-{1000 + index}.\n"
                    f"Best regards,\n{customer[0]}\n")
    if k % 3 == 0:
        log = "\n".join(f"2025-03-0{1 + n % 3} 10:{n:02d} ERROR code={rng.randint(100, 599)}" for n in range(8))
        msg.add_attachment(log.encode(), maintype="text", subtype="plain", filename="error-log.txt")
    if k % 4 == 2:
        msg.add_attachment(b"ticket;status\nT-1;open\n", maintype="text", subtype="csv",
                           filename="état des tickets.csv")  # a non-ASCII file name (RFC 2231)
    return _wire(msg, index)


def order_confirmation(index: int, rng: random.Random) -> bytes:
    """The shop's confirmation to the orders mailbox: ``Order #NNNNN``, a PDF invoice, a CSV of lines."""
    number = 12345 + index * 7
    lines = [rng.choice(_PRODUCTS) for _ in range(1 + index % 3)]
    total = sum(price for _, price in lines)
    msg = _base(index, SHOP, ORDERS, f"Order #{number} confirmed")
    msg.set_content(f"Thank you for your order #{number}.\nTotal: EUR {total:.2f}\n")
    msg.add_alternative(f"<p>Thank you for your order <b>#{number}</b>.</p><p>Total: EUR {total:.2f}</p>",
                        subtype="html")
    msg.add_attachment(_pdf(f"invoice {number}"), maintype="application", subtype="pdf",
                       filename=f"invoice-{number}.pdf")
    if index % 4 == 1:  # every other order
        csv = "product,price\n" + "".join(f"{name},{price:.2f}\n" for name, price in lines)
        msg.add_attachment(csv.encode(), maintype="text", subtype="csv", filename=f"order-{number}.csv")
    return _wire(msg, index)


def newsletter(index: int) -> bytes:
    """Marketing mail that the demo's filter drops."""
    msg = _base(index, Address("Demo News", "news", NEWSLETTER_DOMAIN), SUPPORT, f"This week's news #{index}")
    msg["List-Unsubscribe"] = f"<mailto:unsubscribe@{NEWSLETTER_DOMAIN}>"
    msg.set_content("Ten things you did not know about coffee.\n")
    return _wire(msg, index)


def _headers(index: int, subject: str, extra: str = "") -> bytes:
    return (f"From: Legacy System <legacy@{DOMAIN}>\r\nTo: support@{DOMAIN}\r\nSubject: {subject}\r\n"
            f"Date: {format_datetime(_START + timedelta(minutes=37 * index))}\r\n"
            f"Message-ID: <demo-{index:03d}@{DOMAIN}>\r\nMIME-Version: 1.0\r\n{extra}").encode()


def malformed(index: int) -> list[bytes]:
    """Broken base64, an unknown charset, a multipart without a boundary, a header-only message."""
    broken_base64 = _headers(index, "Broken attachment", 'Content-Type: multipart/mixed; boundary="b1"\r\n') + (
        b"\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee attachment.\r\n"
        b"--b1\r\nContent-Type: application/pdf; name=report.pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="report.pdf"\r\n\r\nJVBERi0xLjQK!!!not*base64@@\r\nJVB\r\n'
        b"--b1--\r\n")
    bad_charset = _headers(index + 1, "=?x-no-such-charset?Q?Gr=FC=DFe?=",
                           "Content-Type: text/plain; charset=x-no-such-charset\r\n") + (
        b"\r\nGr\xfc\xdfe aus dem Altsystem \xe2\x82\xac\r\n")
    no_boundary = _headers(index + 2, "Multipart without a boundary", "Content-Type: multipart/mixed\r\n") + (
        b"\r\n--lost\r\nContent-Type: text/plain\r\n\r\nWhere does this part end?\r\n--lost--\r\n")
    header_only = _headers(index + 3, "Header only, no body")
    return [broken_base64, bad_charset, no_boundary, header_only]


def demo_messages(seed: int = 2025) -> list[bytes]:
    """The whole sample mailbox (38 messages), in a fixed, interleaved order."""
    rng = random.Random(seed)
    support = [support_request(i, rng) for i in range(0, 32, 2)]  # 16
    orders = [order_confirmation(i, rng) for i in range(1, 29, 2)]  # 14
    messages: list[bytes] = []
    for pair in zip(support, orders, strict=False):
        messages.extend(pair)
    messages.extend(support[len(orders):])
    for n in range(4):
        messages.insert(5 + n * 9, newsletter(100 + n))
    messages[20:20] = malformed(200)
    return messages
