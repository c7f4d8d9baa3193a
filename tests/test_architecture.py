"""The import rules of docs/architecture.md hold, and every module imports on its own.

The rules are import-linter contracts in pyproject.toml (``[tool.importlinter]``); ``lint-imports``
checks them too. An import cycle may only break when one particular module of the cycle is the
first imported, so the second test imports each module first, in an interpreter of its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


def test_the_import_contracts_are_kept(tmp_path: Path) -> None:
    # In a child process: lint_imports() reconfigures logging (dictConfig disables every existing
    # logger), which would blind caplog in the tests that run after this one.
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename=sys.argv[1], cache_dir=sys.argv[2], no_logo=True))")
    result = subprocess.run([sys.executable, "-c", code, str(ROOT / "pyproject.toml"), str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def popflow_modules() -> list[str]:
    """Every importable module of the package; alembic's migration scripts are loaded by path, not imported."""
    package = ROOT / "popflow"
    names = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "migrations" in parts or "state_migrations" in parts or parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


# Run in a fresh interpreter: load the third-party libraries once, then fork one child per module
# that imports that module first, a few at a time (forking keeps ~100 fresh starts to seconds).
FIRST_IMPORTS = r"""
import importlib, os, sys, tempfile, traceback
for name in ("pydantic", "sqlalchemy", "alembic.runtime.migration", "pluggy", "yaml", "click", "rich", "httpx",
             "charset_normalizer", "prometheus_client", "cryptography", "apscheduler", "celery"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
folder = tempfile.mkdtemp()
running, failed = {}, []

def reap():
    pid, status = os.wait()
    name, path = running.pop(pid)
    if status != 0:
        with open(path) as report:
            failed.append(f"--- importing {name} first:\n{report.read()}")

for index, name in enumerate(sys.argv[1:]):
    while len(running) >= (os.cpu_count() or 1) + 1:
        reap()
    path = os.path.join(folder, str(index))
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            with open(path, "w") as report:
                report.write(traceback.format_exc())
            os._exit(1)
        os._exit(0)
    running[pid] = (name, path)
while running:
    reap()
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_every_module_imports_first_without_a_cycle_problem() -> None:
    modules = popflow_modules()
    assert "popflow.pipeline" in modules
    assert "popflow.sinks.base" in modules
    result = subprocess.run([sys.executable, "-c", FIRST_IMPORTS, *modules], cwd=ROOT, capture_output=True,
                            text=True, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
