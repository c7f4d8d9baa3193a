#!/bin/sh
# The command the benchmark harness (../shared/bench/bench.py --custom) runs as the user popbench.
#
# Writes a popflow config into $BENCH_WORKDIR from the harness environment (POP3_HOST, POP3_PORT,
# POP3S_PORT, POP3_USER, POP3_PASS, POP3_TLS, POP3_CAFILE, POP3_KEEP, DEST_MAILDIR), then runs
# `popflow poll` once.
#
#   popflow_fetch.sh [maildir|db] [extra YAML lines for the sink...]
#
#   maildir (default)  POP3 -> folder sink (layout: maildir) at $DEST_MAILDIR, default pipeline.
#   db                 POP3 -> SQLite database sink in $BENCH_WORKDIR with the full parse (text, html,
#                      attachment bytes); prints "popbench-delivered: N" (the harness checks the count).
#
# POPFLOW_BIN (default: the popflow beside this script's venv, /opt/popflow-bench/bin/popflow)
# and POPFLOW_BATCH (batch_size, default: popflow's default) can be overridden.
set -eu

MODE=${1:-maildir}
[ $# -gt 0 ] && shift
POPFLOW_BIN=${POPFLOW_BIN:-/opt/popflow-bench/bin/popflow}
WORK=${BENCH_WORKDIR:?BENCH_WORKDIR is not set (run me from the harness)}
CONFIG="$WORK/popflow.yaml"

if [ "${POP3_TLS:-0}" = "1" ]; then
    TLS=implicit
    PORT=${POP3S_PORT:?}
else
    TLS=none
    PORT=${POP3_PORT:?}
fi
if [ "${POP3_KEEP:-0}" = "1" ]; then KEEP=true; else KEEP=false; fi

# Secrets travel through the environment (${VAR} expansion), never into the file.
umask 077
{
    echo "state: sqlite:///$WORK/popflow-state.db"
    echo "data_dir: $WORK/popflow-data"
    echo "log_level: WARNING"
    [ -n "${POPFLOW_BATCH:-}" ] && echo "batch_size: $POPFLOW_BATCH"
    echo "sources:"
    echo "  bench:"
    echo "    type: pop3"
    echo "    host: \${POP3_HOST}"
    echo "    port: $PORT"
    echo "    tls: $TLS"
    [ "$TLS" = none ] && echo "    allow_insecure: true"
    [ "$TLS" = implicit ] && [ -n "${POP3_CAFILE:-}" ] && echo "    ca_file: \${POP3_CAFILE}"
    echo "    username: \${POP3_USER}"
    echo "    password: \${POP3_PASS}"
    echo "    keep_on_server: $KEEP"
    echo "sinks:"
    case "$MODE" in
        maildir)
            echo "  maildir:"
            echo "    type: folder"
            echo "    layout: maildir"
            echo "    path: \${DEST_MAILDIR}"
            # No group_commit key: the default (one syncfs per batch) is what a user gets.
            ;;
        db)
            echo "  db:"
            echo "    type: database"
            echo "    url: sqlite:///$WORK/popflow-mail.db"
            echo "    store_attachments: true"
            ;;
        *)
            echo "popflow_fetch.sh: unknown mode $MODE (maildir or db)" >&2
            exit 2
            ;;
    esac
    for line in "$@"; do echo "    $line"; done
    # The default pipeline: a header filter and routes (headers-only rules; the body is never parsed).
    SINK=$( [ "$MODE" = db ] && echo db || echo maildir )
    echo "filters:"
    echo "  - drop: {subject: '^\\[SPAM\\]'}"
    echo "routes:"
    echo "  - match: {subject: '(?i)invoice'}"
    echo "    sinks: [$SINK]"
    echo "    stop: true"
    echo "  - sinks: [$SINK]"
} > "$CONFIG"

"$POPFLOW_BIN" -q poll -c "$CONFIG" > "$WORK/popflow-poll.out"
status=$?
if [ "$MODE" = db ]; then
    # The harness checks a database fetcher by count: count the rows that landed.
    count=$(/usr/bin/python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(
        "select count(*) from popflow_messages").fetchone()[0])' "$WORK/popflow-mail.db")
    echo "popbench-delivered: $count"
fi
exit $status
