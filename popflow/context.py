"""What sources and sinks get from the host besides their own options."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class LoginDelay:
    """A server's minimum time between logins (RFC 2449 ``LOGIN-DELAY``), as its last session announced it."""

    seconds: float
    since: float
    """``time.time()`` when that session connected: the next login should wait until ``since + seconds``."""


@dataclass
class RuntimeContext:
    """Paths and the stop signal shared by every source and sink of one popflow process."""

    data_dir: Path
    """Where spool, dead-letter and quarantine files live (``data_dir:`` in the config)."""
    base_dir: Path = field(default_factory=Path.cwd)
    """The config file's folder: relative paths in sink options are relative to it."""
    stop: threading.Event = field(default_factory=threading.Event)
    """Set on SIGINT/SIGTERM: finish the message in hand, then QUIT."""
    login_delays: dict[str, LoginDelay] = field(default_factory=dict)
    """Per source name: the LOGIN-DELAY its server announced; :mod:`popflow.scheduler` polls no sooner."""

    @property
    def spool_root(self) -> Path:
        """The folder holding every process's spool folder (see :mod:`popflow.spool`)."""
        return self.data_dir / "spool"

    @property
    def spool_dir(self) -> Path:
        """Where this process spools large messages while they are received (its own, locked folder)."""
        from popflow.spool import process_spool_dir  # created on first use, not for every command

        return process_spool_dir(self.spool_root)

    def resolve(self, path: Path | str) -> Path:
        """A path from the config, relative to the config file's folder."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.base_dir / path
