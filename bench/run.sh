#!/usr/bin/env bash
# One command: install popflow from this checkout where the benchmark user can run it, then run the
# shared harness with popflow beside getmail6, fetchmail, the naive client and the pipelined
# ceiling on both reference workloads (delete mode), then the memory workload; print the tables.
#
#   bench/run.sh                       # mix N=2000 + small N=10000, 3 reps, + memory
#   REPS=1 MIX_N=500 SMALL_N=2000 bench/run.sh      # a quick iteration
#   FETCHERS=naive,ceiling bench/run.sh              # fewer peers (popflow always runs)
#   SKIP_MEMORY=1 / SKIP_DB=1 / SKIP_INSTALL=1 bench/run.sh
#   JOURNALED_FS=1 bench/run.sh        # BENCH_DIR on a loop-mounted journaled ext4 (journaled_fs.sh)
#   bench/run.sh --tls                 # extra arguments go to every bench.py call
#
# Environment: POPFLOW_SHARED_BENCH (the harness folder; default ../shared/bench beside the
# repository), POPFLOW_BENCH_VENV (default /opt/popflow-bench), BENCH_DIR (harness state).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${POPFLOW_SHARED_BENCH:-}
if [[ -z "$SHARED" ]]; then
    for candidate in "$REPO/../shared/bench" "$REPO/../../shared/bench"; do
        if [[ -x "$candidate/bench.py" ]]; then SHARED=$(cd "$candidate" && pwd); break; fi
    done
fi
if [[ -z "$SHARED" || ! -x "$SHARED/bench.py" ]]; then
    echo "bench/run.sh: the harness (bench.py) was not found; set POPFLOW_SHARED_BENCH" >&2
    exit 2
fi

VENV=${POPFLOW_BENCH_VENV:-/opt/popflow-bench}
PYTHON=${BENCH_PYTHON:-/usr/bin/python3}  # not a pyenv under root's home: popbench must run it
REPS=${REPS:-3}
MIX_N=${MIX_N:-2000}
SMALL_N=${SMALL_N:-10000}
FETCHERS=${FETCHERS:-getmail,fetchmail,naive,ceiling}
FETCH="$VENV/share/popflow-bench/popflow_fetch.sh"

# 1. Harness prerequisites (idempotent: apt packages, getmail6, the popbench user).
if [[ -z "${SKIP_SETUP:-}" ]]; then
    "$SHARED/setup.sh" > /dev/null
fi

# 2. popflow, installed non-editable into a venv that popbench can read (/work may not be).
if [[ -z "${SKIP_INSTALL:-}" ]]; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        "$PYTHON" -m venv "$VENV"
    fi
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    # Copy the tracked tree (plus local edits) so stale build/ or egg-info folders never leak in.
    git -C "$REPO" ls-files -z --cached --others --exclude-standard -- pyproject.toml README.md popflow \
        | (cd "$REPO" && xargs -0 cp --parents -t "$build" 2>/dev/null || true)
    "$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$build"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$build"   # dependencies, if any are missing
    install -D -m 0755 "$HERE/popflow_fetch.sh" "$FETCH"
    chmod -R a+rX "$VENV"
    echo "popflow $("$VENV/bin/popflow" --version | awk '{print $NF}') installed in $VENV ($(git -C "$REPO" rev-parse --short HEAD))"
fi

POPFLOW_CMD="POPFLOW_BIN=$VENV/bin/popflow $FETCH maildir"
POPFLOW_DB_CMD="POPFLOW_BIN=$VENV/bin/popflow $FETCH db"
customs=(--custom "popflow=$POPFLOW_CMD")
[[ -z "${SKIP_DB:-}" ]] && customs+=(--custom "popflow-db=$POPFLOW_DB_CMD")

if [[ -n "${JOURNALED_FS:-}" ]]; then
    # The harness's own Dovecot must not keep running from the other BENCH_DIR.
    (BENCH_DIR=${BENCH_DIR:-/tmp/popbench} "$SHARED/dovecot.sh" stop > /dev/null 2>&1 || true)
    BENCH_DIR="$("$HERE/journaled_fs.sh" mount)/popbench"
    trap '(BENCH_DIR=$BENCH_DIR "$SHARED/dovecot.sh" stop > /dev/null 2>&1 || true); rm -rf "${build:-}"' EXIT
fi
export BENCH_DIR=${BENCH_DIR:-/tmp/popbench}
stamp=$(date +%Y%m%d-%H%M%S)
outs=()
run() {  # run <label> <bench.py args...>
    local label=$1; shift
    local out="$BENCH_DIR/results/$stamp-popflow-$label"
    outs+=("$label:$out")
    "$SHARED/bench.py" --modes delete --reps "$REPS" --fetchers "$FETCHERS" "${customs[@]}" --out "$out" "$@"
}

# 3. The two reference workloads, delete mode.
run "mix-$MIX_N" --profile mix -n "$MIX_N" "$@"
run "small-$SMALL_N" --profile small -n "$SMALL_N" "$@"

# 4. The memory workload (several 40 MB messages among hundreds of small ones; 1,000 vs 10,000).
if [[ -z "${SKIP_MEMORY:-}" ]]; then
    "$VENV/bin/python" "$HERE/memory.py" --popflow "$VENV/bin/popflow" --out "$BENCH_DIR/results/$stamp-popflow-memory"
fi

# 5. The tables again, together.
for entry in "${outs[@]}"; do
    echo
    echo "## ${entry%%:*}"
    cat "${entry#*:}/summary.md"
done
if [[ -z "${SKIP_MEMORY:-}" ]]; then
    echo
    echo "## memory"
    cat "$BENCH_DIR/results/$stamp-popflow-memory/summary.md"
fi
