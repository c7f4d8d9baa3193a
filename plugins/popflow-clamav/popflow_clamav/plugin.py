"""The popflow hooks: read ``plugins: {clamav: {...}}`` at startup, vote on every message.

Registered through the entry point ``clamav = "popflow_clamav.plugin"`` (group ``popflow``). The
module-level hooks delegate to one :class:`ClamavPlugin`; tests and embedders may register their own
``ClamavPlugin()`` instances instead, each with its own options.

Without ``plugins.clamav`` in the config the plugin is installed but disabled: it abstains (returns
None) and never contacts clamd.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from popflow import ConfigError, Message, ScanVerdict, Timeout, hookimpl
from popflow_clamav.client import DEFAULT_ADDRESS, ClamdClient, ClamdError, ScanResult

if TYPE_CHECKING:
    from popflow import Config

SCANNER = "clamav"
PLUGIN_NAME = "clamav"


class ClamavOptions(BaseModel):
    """``plugins.clamav`` in the config. With neither ``address`` nor ``socket``: 127.0.0.1:3310."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    """clamd's TCP socket as ``host:port`` (clamd.conf ``TCPSocket``/``TCPAddr``)."""
    socket: str | None = None
    """clamd's unix socket path (clamd.conf ``LocalSocket``), instead of ``address``."""
    timeout: Timeout = 30.0
    """For connecting, each send and waiting for the verdict."""
    on_error: Literal["defer", "quarantine", "deliver"] = "defer"
    """What the pipeline does when clamd cannot give a verdict (see the README)."""
    scan_attachments: bool = False
    """Also send each attachment's decoded bytes on its own (clamd already decodes MIME itself)."""

    @model_validator(mode="after")
    def _one_endpoint(self) -> ClamavOptions:
        if self.address is not None and self.socket is not None:
            raise ValueError("give either 'address' or 'socket', not both")
        if self.address is None and self.socket is None:
            self.address = DEFAULT_ADDRESS
        if self.address is not None:
            ClamdClient(self.address)  # validates host:port now, not at the first message
        return self

    def client(self) -> ClamdClient:
        """A client for the configured endpoint."""
        return ClamdClient(self.address, socket_path=self.socket, timeout=self.timeout)


popflow_options_model = ClamavOptions
"""What ``plugins.clamav`` may hold, for ``popflow schema``."""


def load_options(raw: dict[str, object] | None) -> ClamavOptions | None:
    """Validate the plugin's config section; None (not configured) means disabled."""
    if raw is None:
        return None
    try:
        return ClamavOptions.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in ("plugins", PLUGIN_NAME, *first["loc"]))
        raise ConfigError(first["msg"], path=where) from exc


class ClamavPlugin:
    """The hooks, bound to one set of options."""

    def __init__(self, options: ClamavOptions | None = None) -> None:
        self.options = options

    @hookimpl
    def popflow_startup(self, config: Config) -> None:
        """Read ``plugins.clamav``; absent means disabled."""
        self.options = load_options(config.plugin_options(PLUGIN_NAME))

    @hookimpl
    def popflow_scan(self, message: Message) -> ScanVerdict | None:
        """Stream the raw message to clamd (and each attachment, if asked); None when disabled."""
        if self.options is None:
            return None
        return self.scan(message)

    def scan(self, message: Message) -> ScanVerdict:
        """The verdict for one message; clamd's problems become ``error`` verdicts, never clean."""
        options = self.options or ClamavOptions()
        client = options.client()
        try:
            raw = message.raw
        except ValueError as exc:
            return self._verdict(ScanResult("error", reason=f"nothing to scan: {exc}"))
        result = self._ask(client, raw.iter_chunks(client.chunk_size))
        if result.status != "clean" or not options.scan_attachments:
            return self._verdict(result)
        for attachment in message.attachments:
            result = self._ask(client, attachment.chunks())  # decoded in pieces: bounded memory
            if result.status != "clean":
                return self._verdict(result, part=f"attachment {attachment.filename!r}")
        return self._verdict(result)

    def check(self) -> str:
        """For ``popflow check --connect``: clamd's version, or :class:`ClamdError` if unreachable."""
        client = (self.options or ClamavOptions()).client()
        if not client.ping():
            raise ClamdError(f"clamd at {client.endpoint} did not answer PONG")
        return f"{client.version()} at {client.endpoint}"

    @staticmethod
    def _ask(client: ClamdClient, chunks: Iterable[bytes]) -> ScanResult:
        try:
            return client.instream(chunks)
        except ClamdError as exc:
            return ScanResult("error", reason=str(exc))

    def _verdict(self, result: ScanResult, part: str | None = None) -> ScanVerdict:
        on_error = self.options.on_error if self.options is not None else "defer"
        reason = result.reason
        if result.status == "infected":
            reason = f"clamd found {result.signature}" + (f" in {part}" if part else "")
        elif result.status == "error" and part:
            reason = f"{reason} ({part})"
        return ScanVerdict(status=result.status, scanner=SCANNER, signature=result.signature,
                           reason=reason, on_error=on_error)


_plugin = ClamavPlugin()
"""The instance behind the module-level hooks that the entry point registers."""


@hookimpl
def popflow_startup(config: Config) -> None:
    """Read ``plugins.clamav`` from the config; absent means the plugin stays disabled."""
    _plugin.popflow_startup(config)


@hookimpl
def popflow_scan(message: Message) -> ScanVerdict | None:
    """Ask clamd about ``message``; None when the plugin is not configured."""
    return _plugin.popflow_scan(message)


@hookimpl
def popflow_check_connection() -> str | None:
    """For ``popflow check --connect``: clamd's version, or None when the plugin is not configured."""
    return _plugin.check() if _plugin.options is not None else None
