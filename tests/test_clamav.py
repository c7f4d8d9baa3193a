"""The ClamAV plugin against a real, private clamd (tests/support/clamd.py).

Covers the client (INSTREAM over TCP and a unix socket, PING/VERSION, reply parsing, the size
limit, timeouts) and the plugin (options, disabled without config, verdicts, on_error carried
through, attachments scanned on their own).
"""

from __future__ import annotations

import importlib.metadata
import io
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from email.message import EmailMessage
from pathlib import Path

import pytest
from popflow_clamav import plugin as clamav_module
from popflow_clamav.client import ClamdClient, ClamdError, parse_reply
from popflow_clamav.plugin import ClamavOptions, ClamavPlugin, load_options

from popflow import Message, ScanVerdict
from popflow.config import Config
from popflow.errors import ConfigError
from popflow.message import Attachment, Body
from popflow.plugins import PopflowPluginManager
from popflow.raw import RawMessage
from tests.support.clamd import EICAR, SIGNATURE_PREFIX, STREAM_MAX_LENGTH, ClamdServer, free_port


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    """One private clamd for the session (loading even a tiny database takes a moment)."""
    server = ClamdServer(tmp_path_factory.mktemp("clamd"))
    server.start()
    yield server
    server.stop()


# -- sample mail ------------------------------------------------------------------------------
def mail(subject: str = "hello") -> EmailMessage:
    """A plain message with a text body."""
    msg = EmailMessage()
    msg["From"] = "sender@example.com"
    msg["To"] = "support@example.com"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@example.com>"
    msg.set_content("Hello,\nplease find the file attached.\n")
    return msg


def eicar_attachment() -> bytes:
    msg = mail("eicar attached")
    msg.add_attachment(EICAR, maintype="application", subtype="octet-stream", filename="eicar.com")
    data = msg.as_bytes()
    assert EICAR not in data  # base64: only clamd's MIME decoding can find it
    return data


def eicar_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("docs/readme.txt", "nothing to see\n" * 50)
        archive.writestr("docs/eicar.com", EICAR)
    assert EICAR not in buffer.getvalue()  # deflated: only clamd's archive scanning can find it
    msg = mail("invoice zip")
    msg.add_attachment(buffer.getvalue(), maintype="application", subtype="zip", filename="invoice.zip")
    return msg.as_bytes()


def eicar_quoted_printable() -> bytes:
    # Every byte escaped and soft line breaks: the raw bytes never contain the string itself.
    escaped = "".join(f"={byte:02X}" for byte in EICAR)
    lines = [escaped[i:i + 72] for i in range(0, len(escaped), 72)]
    body = "=\r\n".join(lines)
    head = ("From: sender@example.com\r\nTo: support@example.com\r\nSubject: qp\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
            "--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nsee below\r\n"
            "--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n")
    data = (head + body + "\r\n--b1--\r\n").encode()
    assert EICAR not in data
    return data


def clean_mail() -> bytes:
    msg = mail("order #1234")
    msg.add_attachment(b"%PDF-1.4\n% not a virus\n" * 100, maintype="application", subtype="pdf",
                       filename="order.pdf")
    return msg.as_bytes()


def big_mail(size: int) -> bytes:
    msg = mail("large")
    msg.add_attachment(b"A" * size, maintype="application", subtype="octet-stream", filename="big.bin")
    return msg.as_bytes()


def message_of(data: bytes, attachments: Sequence[tuple[str, bytes]] = ()) -> Message:
    """A Message with raw bytes and (optionally) attachments whose content() gives these bytes."""
    message = Message(source="test", uidl=f"uid-{len(data)}")
    message.attach_raw(RawMessage.from_bytes(data))
    parts = []
    for name, content in attachments:
        part = Attachment(filename=name, size=len(content))
        part._content_loader = lambda content=content: content
        parts.append(part)
    message.set_body_loader(lambda: Body(text="", attachments=parts))
    return message


def plugin_with(**options: object) -> ClamavPlugin:
    """A plugin configured the way popflow does it: through popflow_startup(config)."""
    plugin = ClamavPlugin()
    plugin.popflow_startup(Config.model_validate({"plugins": {"clamav": options}}))
    return plugin


def verdict_of(plugin: ClamavPlugin, message: Message) -> ScanVerdict:
    """The plugin's verdict, which must not be an abstention."""
    verdict = plugin.popflow_scan(message)
    assert isinstance(verdict, ScanVerdict)
    return verdict


# -- the client -------------------------------------------------------------------------------
def test_ping_and_version(clamd: ClamdServer) -> None:
    client = ClamdClient(clamd.address, timeout=5)
    assert client.ping()
    assert client.version().startswith("ClamAV ")


@pytest.mark.parametrize("sample", [eicar_attachment, eicar_zip, eicar_quoted_printable],
                         ids=["base64-attachment", "inside-zip", "quoted-printable"])
def test_instream_finds_eicar(clamd: ClamdServer, sample: Callable[[], bytes]) -> None:
    result = ClamdClient(clamd.address, timeout=10).instream([sample()])
    assert result.status == "infected", result
    assert result.signature is not None and result.signature.startswith(SIGNATURE_PREFIX)


def test_instream_clean_mail(clamd: ClamdServer) -> None:
    result = ClamdClient(clamd.address, timeout=10).instream([clean_mail()])
    assert (result.status, result.signature, result.reply) == ("clean", None, "stream: OK")


def test_instream_over_unix_socket(clamd: ClamdServer) -> None:
    client = ClamdClient(socket_path=str(clamd.socket_path), timeout=10)
    assert client.ping()
    assert client.instream([eicar_attachment()]).status == "infected"
    assert client.instream([clean_mail()]).status == "clean"


def test_instream_streams_many_small_chunks(clamd: ClamdServer) -> None:
    data = eicar_zip()
    client = ClamdClient(clamd.address, timeout=10, chunk_size=97)  # odd size: chunk edges anywhere
    result = client.instream(data[i:i + 1000] for i in range(0, len(data), 1000))
    assert result.status == "infected"


@pytest.mark.parametrize("size", [STREAM_MAX_LENGTH + 4096, 8 * STREAM_MAX_LENGTH],
                         ids=["just-over", "far-over"])
def test_over_stream_max_length_is_an_error_never_clean(clamd: ClamdServer, size: int) -> None:
    result = ClamdClient(clamd.address, timeout=10).instream([big_mail(size)])
    assert result.status == "error"
    assert "size limit" in (result.reason or "") or "dropped the stream" in (result.reason or "")
    assert clamd.ping()  # clamd itself is fine afterwards


def test_closed_port_raises(clamd: ClamdServer) -> None:
    with pytest.raises(ClamdError, match="cannot connect"):
        ClamdClient(f"127.0.0.1:{free_port()}", timeout=2).instream([b"x"])


def test_silent_server_times_out() -> None:
    # A peer that accepts and never answers: the timeout must end the wait.
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    try:
        client = ClamdClient(f"127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ClamdError, match="did not answer"):
            client.instream([b"hello"])
        assert time.monotonic() - started < 5
    finally:
        thread.join(2)
        for sock in accepted:
            sock.close()
        listener.close()


@pytest.mark.parametrize(("reply", "status", "signature"), [
    ("stream: OK\0", "clean", None),
    ("stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0", "infected", "Eicar-Test-Signature.UNOFFICIAL"),
    ("INSTREAM size limit exceeded. ERROR\0", "error", None),
    ("stream: Can't allocate memory ERROR", "error", None),
    ("UNKNOWN COMMAND", "error", None),
    ("stream: FOUND", "error", None),
    ("OK", "error", None),
    ("", "error", None),
])
def test_parse_reply(reply: str, status: str, signature: str | None) -> None:
    result = parse_reply(reply)
    assert (result.status, result.signature) == (status, signature)
    if status == "error":
        assert result.reason


def test_address_and_socket_are_exclusive() -> None:
    with pytest.raises(ValueError):
        ClamdClient("127.0.0.1:3310", socket_path="/run/clamav/clamd.ctl")
    with pytest.raises(ValueError):
        ClamdClient("localhost")


# -- the plugin -------------------------------------------------------------------------------
def test_disabled_without_options() -> None:
    plugin = ClamavPlugin()
    plugin.popflow_startup(Config.model_validate({}))
    assert plugin.options is None
    assert plugin.popflow_scan(message_of(eicar_attachment())) is None


def test_options_defaults_and_errors() -> None:
    options = load_options({})
    assert options is not None
    assert (options.address, options.socket, options.on_error, options.scan_attachments) == (
        "127.0.0.1:3310", None, "defer", False)
    slow = load_options({"timeout": "2m"})
    assert slow is not None and slow.timeout == 120
    with pytest.raises(ConfigError, match=r"plugins\.clamav\.on_error"):
        load_options({"on_error": "ignore"})
    with pytest.raises(ConfigError, match="not both"):
        load_options({"address": "127.0.0.1:3310", "socket": "/tmp/clamd.sock"})
    with pytest.raises(ConfigError, match=r"plugins\.clamav\.adress"):
        load_options({"adress": "127.0.0.1:3310"})


@pytest.mark.parametrize("sample", [eicar_attachment, eicar_zip, eicar_quoted_printable],
                         ids=["base64-attachment", "inside-zip", "quoted-printable"])
def test_plugin_infected_verdict(clamd: ClamdServer, sample: Callable[[], bytes]) -> None:
    verdict = verdict_of(plugin_with(address=clamd.address), message_of(sample()))
    assert (verdict.status, verdict.scanner) == ("infected", "clamav")
    assert verdict.signature is not None and verdict.signature.startswith(SIGNATURE_PREFIX)
    assert verdict.signature in (verdict.reason or "")


def test_plugin_clean_verdict(clamd: ClamdServer) -> None:
    verdict = plugin_with(address=clamd.address, on_error="quarantine").popflow_scan(message_of(clean_mail()))
    assert verdict == ScanVerdict(status="clean", scanner="clamav", on_error="quarantine")


def test_plugin_over_size_limit_is_error_with_on_error(clamd: ClamdServer) -> None:
    plugin = plugin_with(address=clamd.address, on_error="deliver")
    verdict = plugin.popflow_scan(message_of(big_mail(2 * STREAM_MAX_LENGTH)))
    assert verdict is not None
    assert (verdict.status, verdict.on_error) == ("error", "deliver")
    assert verdict.reason


@pytest.mark.parametrize("on_error", ["defer", "quarantine", "deliver"])
def test_plugin_unreachable_clamd_is_error_with_on_error(on_error: str) -> None:
    plugin = plugin_with(address=f"127.0.0.1:{free_port()}", on_error=on_error, timeout="2s")
    verdict = plugin.popflow_scan(message_of(clean_mail()))
    assert verdict is not None
    assert (verdict.status, verdict.scanner, verdict.on_error) == ("error", "clamav", on_error)
    assert "cannot connect" in (verdict.reason or "")


def test_plugin_default_on_error_is_defer(tmp_path: Path) -> None:
    plugin = plugin_with(socket=str(tmp_path / "no-such.sock"))
    verdict = plugin.popflow_scan(message_of(clean_mail()))
    assert verdict is not None and (verdict.status, verdict.on_error) == ("error", "defer")


def test_plugin_stopped_clamd_then_back(tmp_path: Path) -> None:
    server = ClamdServer(tmp_path)
    server.start()
    try:
        plugin = plugin_with(address=server.address, timeout="5s")
        assert verdict_of(plugin, message_of(eicar_zip())).status == "infected"
        server.stop()
        down = plugin.popflow_scan(message_of(eicar_zip()))
        assert down is not None and (down.status, down.on_error) == ("error", "defer")
        server.start()
        assert verdict_of(plugin, message_of(eicar_zip())).status == "infected"
    finally:
        server.stop()


def test_plugin_scans_attachments_separately(clamd: ClamdServer) -> None:
    # The raw bytes are clean; the attachment's decoded content (as a parser produced it) is not.
    message = message_of(clean_mail(), attachments=[("notes.txt", b"fine"), ("payload.bin", EICAR)])
    assert verdict_of(plugin_with(address=clamd.address), message).status == "clean"
    verdict = plugin_with(address=clamd.address, scan_attachments=True).popflow_scan(message)
    assert verdict is not None and verdict.status == "infected"
    assert "payload.bin" in (verdict.reason or "")


def test_plugin_check_reports_version(clamd: ClamdServer) -> None:
    assert plugin_with(address=clamd.address).check().startswith("ClamAV ")
    with pytest.raises(ClamdError):
        plugin_with(address=f"127.0.0.1:{free_port()}", timeout="1s").check()


def test_entry_point_registers_the_module(clamd: ClamdServer) -> None:
    (entry_point,) = [ep for ep in importlib.metadata.entry_points(group="popflow") if ep.name == "clamav"]
    module = entry_point.load()
    assert module is clamav_module
    pm = PopflowPluginManager()
    pm.register(module, name="clamav")
    try:
        pm.hook.popflow_startup(config=Config.model_validate({"plugins": {"clamav": {"address": clamd.address}}}))
        verdicts = pm.hook.popflow_scan(message=message_of(eicar_zip()))
        assert [v.status for v in verdicts] == ["infected"]
        pm.hook.popflow_startup(config=Config.model_validate({}))  # config without clamav: disabled again
        assert pm.hook.popflow_scan(message=message_of(eicar_zip())) == []
    finally:
        pm.unregister(module)
        clamav_module._plugin.options = None


def test_options_model_is_exported() -> None:
    assert ClamavOptions(address="[::1]:3310").client().address == ("::1", 3310)
