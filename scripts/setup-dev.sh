#!/usr/bin/env bash
# Create (or refresh) the development virtualenv: popflow with its dev extras, plus every plugin
# package under plugins/ (each installed editable, so its entry point registers with popflow).
#
# Idempotent and quick: pip runs only when a pyproject.toml is newer than the stamp file or the set
# of plugin packages changed. Needs only a Python >= 3.11 with the venv module; no root, no apt.
#
#   scripts/setup-dev.sh            # VENV=.venv by default; PYTHON=python3.12 to pick an interpreter
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.popflow-setup.stamp"

say() { printf '[setup-dev] %s\n' "$*" >&2; }

# A Python that is at least 3.11 and can create a venv with pip in it (Debian's python3 needs the
# python3-venv package for that; scripts/setup-test-env.sh installs it when missing).
find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

venv_works() {
    [[ -x "$VENV/bin/python" ]] \
        && "$VENV/bin/python" -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

if ! venv_works; then
    python=$(find_python) || { say "need Python >= 3.11 (set PYTHON=/path/to/python3.11)"; exit 1; }
    if [[ -e "$VENV" ]]; then
        # A venv copied from another machine or made by an old Python: start over, it is only a cache.
        say "$VENV is broken or too old; recreating it"
        rm -rf "$VENV"
    fi
    say "creating $VENV with $python ($("$python" --version 2>&1))"
    "$python" -m venv "$VENV"
fi

# What gets installed: the core package and every plugins/<name>/ that has a pyproject.toml.
targets=(-e '.[dev]')
manifest="core"
for pyproject in plugins/*/pyproject.toml; do
    [[ -e "$pyproject" ]] || continue
    targets+=(-e "$(dirname "$pyproject")")
    manifest+=" $(dirname "$pyproject")"
done

needs_install() {
    [[ -f "$STAMP" ]] || return 0
    [[ "$(cat "$STAMP")" == "$manifest" ]] || return 0
    [[ -x "$VENV/bin/popflow" ]] || return 0
    local pyproject
    for pyproject in pyproject.toml plugins/*/pyproject.toml; do
        [[ -e "$pyproject" && "$pyproject" -nt "$STAMP" ]] && return 0
    done
    return 1
}

if needs_install; then
    say "installing: ${manifest}"
    # Old pips cannot do PEP 660 editable installs of a pyproject-only package.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade 'pip>=23.1'
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${targets[@]}"
    printf '%s' "$manifest" >"$STAMP"
else
    say "$VENV is up to date"
fi
