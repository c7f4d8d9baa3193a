"""``popflow new-plugin``: the scaffolded package installs with ``pip install -e`` into a fresh venv,
registers through its entry point, and its own tests (``pop3_server`` fixture, a real poll) pass.

The fresh venv reaches the project's installed packages through a ``.pth`` file instead of
downloading them again (``pip install --no-deps --no-build-isolation``): what is proven is the
plugin's own packaging, entry point and tests, in seconds and offline.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

from popflow.cli import main
from popflow.scaffold import ScaffoldError, names

pytestmark = pytest.mark.timeout(240)


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, f"{command}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_scaffolded_plugin_installs_and_its_tests_pass(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["new-plugin", "subject-words", "--dir", str(tmp_path / "plugin")])
    assert result.exit_code == 0, result.output
    plugin = tmp_path / "plugin"
    assert (plugin / "popflow_subject_words" / "plugin.py").exists() and (plugin / "README.md").exists()
    assert "$" not in (plugin / "pyproject.toml").read_text()

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
                .stdout.strip())
    # The project's packages (popflow, pytest, setuptools) without copying them.
    (site / "_parent_env.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-build-isolation",
        "--no-index", "-e", plugin, cwd=tmp_path)
    listed = run(python, "-m", "popflow", "plugins", cwd=tmp_path).stdout
    assert "subject_words" in listed
    tests = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", plugin / "tests", cwd=plugin)
    assert "2 passed" in tests.stdout
    # The plugin lives in the new venv only: the project's own environment does not see it.
    assert "subject_words" not in CliRunner().invoke(main, ["plugins"]).output


def test_bad_names_and_taken_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError):
        names("Bad Name")
    assert names("order-tagger") == {"name": "order_tagger", "package": "popflow_order_tagger",
                                     "distribution": "popflow-order-tagger"}
    assert CliRunner().invoke(main, ["new-plugin", "../evil"]).exit_code == 2
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("mine")
    result = CliRunner().invoke(main, ["new-plugin", "ok", "--dir", str(tmp_path / "taken")])
    assert result.exit_code == 2 and (tmp_path / "taken" / "file").read_text() == "mine"
