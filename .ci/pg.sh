# shellcheck shell=bash
# Throwaway PostgreSQL 15 server for tests. Source this file, then:
#
#   pg_start   # starts a server, exports RELAIS_TEST_DATABASE_URL
#   pg_stop    # stops it and removes its data folder
#
# Both are idempotent and safe under `set -euo pipefail`. The server listens on
# 127.0.0.1 on a free port, trusts every local connection, and keeps fsync and
# synchronous_commit on, so durability bugs are not hidden by the test setup.

RELAIS_PG_BIN="${RELAIS_PG_BIN:-/usr/lib/postgresql/15/bin}"

_pg_log() { printf 'pg.sh: %s\n' "$*" >&2; }

_pg_free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

_pg_install() {
    if [[ -x "$RELAIS_PG_BIN/postgres" ]]; then
        return 0
    fi
    _pg_log "installing postgresql-15 (apt)"
    apt-get update -qq >/dev/null || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        postgresql-15 >/dev/null || return 1
    if [[ ! -x "$RELAIS_PG_BIN/postgres" ]]; then
        _pg_log "postgres binary still missing at $RELAIS_PG_BIN/postgres"
        return 1
    fi
}

# Runs a PostgreSQL server tool as the `postgres` OS user (initdb refuses root).
_pg_as_postgres() {
    if [[ "$(id -u)" -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_start() {
    # Already running (started by us in this shell)? Nothing to do.
    if [[ -n "${RELAIS_PG_DIR:-}" && -d "${RELAIS_PG_DIR}/data" ]] &&
        _pg_as_postgres "$RELAIS_PG_BIN/pg_ctl" -D "$RELAIS_PG_DIR/data" status >/dev/null 2>&1; then
        return 0
    fi
    # A half-started leftover: clean it up first.
    pg_stop

    _pg_install || return 1

    if [[ "$(id -u)" -eq 0 ]] && ! id -u postgres >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin postgres || return 1
    fi

    local dir
    # A short path under /tmp keeps the unix socket path below its 107-byte limit.
    dir="$(mktemp -d /tmp/relais-pg.XXXXXX)" || return 1
    RELAIS_PG_DIR="$dir"
    export RELAIS_PG_DIR
    if [[ "$(id -u)" -eq 0 ]]; then
        chown postgres: "$dir" || { pg_stop; return 1; }
    fi

    if ! _pg_as_postgres "$RELAIS_PG_BIN/initdb" -D "$dir/data" -A trust -U postgres \
        -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1; then
        _pg_log "initdb failed:"
        cat "$dir/initdb.log" >&2
        pg_stop
        return 1
    fi

    # The port is picked before the server binds it, so another process could
    # take it meanwhile: retry a few times with a new port.
    local attempt port started=0
    for attempt in 1 2 3; do
        port="$(_pg_free_port)" || { pg_stop; return 1; }
        {
            echo "# relais test settings (attempt $attempt)"
            echo "listen_addresses = '127.0.0.1'"
            echo "port = $port"
            echo "unix_socket_directories = '$dir'"
            echo "max_connections = 200"
            echo "max_prepared_transactions = 0"
            echo "fsync = on"
            echo "synchronous_commit = on"
            echo "full_page_writes = on"
            echo "log_min_messages = warning"
            echo "log_min_error_statement = error"
        } >>"$dir/data/postgresql.conf"
        if _pg_as_postgres "$RELAIS_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" \
            -w -t 60 start >/dev/null 2>&1; then
            started=1
            break
        fi
        _pg_log "start attempt $attempt on port $port failed"
    done
    if [[ "$started" -ne 1 ]]; then
        _pg_log "could not start PostgreSQL; server log:"
        cat "$dir/postgres.log" >&2 2>/dev/null || true
        pg_stop
        return 1
    fi

    if ! "$RELAIS_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres \
        -d postgres -c 'CREATE DATABASE relais_test' >/dev/null; then
        _pg_log "could not create database relais_test"
        pg_stop
        return 1
    fi

    RELAIS_PG_PORT="$port"
    RELAIS_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/relais_test"
    export RELAIS_PG_PORT RELAIS_TEST_DATABASE_URL
    _pg_log "PostgreSQL up on 127.0.0.1:$port (data in $dir)"
}

pg_stop() {
    local dir="${RELAIS_PG_DIR:-}"
    if [[ -n "$dir" ]]; then
        if [[ -f "$dir/data/postmaster.pid" ]]; then
            _pg_as_postgres "$RELAIS_PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w -t 30 \
                stop >/dev/null 2>&1 || true
        fi
        rm -rf -- "$dir" || true
    fi
    unset RELAIS_PG_DIR RELAIS_PG_PORT RELAIS_TEST_DATABASE_URL
    return 0
}
