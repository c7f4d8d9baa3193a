"""``popflow new-plugin NAME``: a plugin package that installs, registers and passes its own tests.

The files come from ``popflow/templates/plugin/`` (``*.tmpl``, :class:`string.Template` syntax:
``$name``, ``$package``, ``$distribution``); ``package/`` becomes the import package.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*$")


class ScaffoldError(Exception):
    """The name is not usable or the target folder is taken."""


def names(name: str) -> dict[str, str]:
    """The plugin's entry-point ``name``, import ``package`` and ``distribution`` names."""
    if not NAME_RE.match(name) or len(name) > 60:
        raise ScaffoldError(f"{name!r} is not a plugin name: use lowercase letters, digits, '-' or '_' "
                            "(e.g. order-tagger)")
    plain = name.replace("-", "_")
    return {"name": plain, "package": f"popflow_{plain}", "distribution": f"popflow-{plain.replace('_', '-')}"}


def _files(root: Traversable, prefix: str = "") -> list[tuple[str, str]]:
    found = []
    for entry in root.iterdir():
        if entry.is_dir():
            found += _files(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".tmpl"):
            found.append((prefix + entry.name.removesuffix(".tmpl"), entry.read_text(encoding="utf-8")))
    return found


def scaffold(name: str, directory: Path | None = None) -> tuple[Path, list[Path]]:
    """Write the package; returns its folder and the files written. Never overwrites."""
    values = names(name)
    target = directory or Path(values["distribution"])
    if target.exists() and any(target.iterdir()):
        raise ScaffoldError(f"{target} exists and is not empty; not writing into it")
    written = []
    for relative, text in sorted(_files(resources.files("popflow").joinpath("templates/plugin"))):
        path = target / relative.replace("package/", f"{values['package']}/", 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(text).substitute(values), encoding="utf-8")
        written.append(path)
    return target, written
