"""Debian's headless Chromium for tests: a screenshot of a page, and the DOM it rendered.

``chromium`` comes from ``scripts/setup-test-env.sh``. Missing, it fails the test under CI=true
and skips it otherwise, like every other service the suite needs. Each call starts a fresh browser
with a throwaway profile; ``--no-sandbox`` because the suite runs as root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest


def chromium() -> str:
    """The chromium binary (fails or skips the test when there is none)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required under CI=true (scripts/setup-test-env.sh installs it)", pytrace=False)
        pytest.skip("chromium is not installed (run scripts/setup-test-env.sh)")
    return found


def _run(url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="popflow-chromium-") as profile:
        return subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--disable-extensions", "--disable-background-networking",
             f"--user-data-dir={profile}", "--window-size=1400,900", *flags, url],
            capture_output=True, text=True, timeout=120, check=False)


def screenshot(url: str, target: Path) -> Path:
    """Render ``url`` and save a PNG at ``target``."""
    result = _run(url, f"--screenshot={target}")
    assert target.exists() and target.stat().st_size > 0, f"no screenshot: {result.stderr[-2000:]}"
    return target


def rendered_dom(url: str) -> str:
    """The DOM after Chromium rendered ``url`` (``--dump-dom``)."""
    result = _run(url, "--dump-dom")
    assert result.returncode == 0 and "<html" in result.stdout, f"chromium failed: {result.stderr[-2000:]}"
    return result.stdout


class FieldParser(HTMLParser):
    """Collects ``<tr data-source=NAME>`` rows as ``{NAME: {data-field: text}}`` and top-level ``data-field`` texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.fields: dict[str, str] = {}
        self._row: str | None = None
        self._field: str | None = None
        self._depth = 0
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "tr" and attributes.get("data-source") is not None:
            self._row = attributes["data-source"]
            self.rows[self._row or ""] = {}
        if self._field is not None:
            self._depth += 1
        elif attributes.get("data-field"):
            self._field, self._depth, self._text = attributes["data-field"], 0, []

    def handle_endtag(self, tag: str) -> None:
        if self._field is None:
            if tag == "tr":
                self._row = None
            return
        if self._depth:
            self._depth -= 1
            return
        text = " ".join("".join(self._text).split())
        if self._row is not None:
            self.rows[self._row][self._field] = text
        else:
            self.fields[self._field] = text
        self._field = None

    def handle_data(self, data: str) -> None:
        if self._field is not None:
            self._text.append(data)


def page_fields(html: str) -> FieldParser:
    """Parse a status page's rows and fields."""
    parser = FieldParser()
    parser.feed(html)
    return parser
