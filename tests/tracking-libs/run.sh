#!/usr/bin/env bash
# Sends identify + track + page to a local relais server (SQLite storage) with
# three real tracking libraries -- segment-analytics-python, rudder-sdk-python
# and @segment/analytics-node -- then checks through relais's admin API that
# each library's customer and events arrived (verify.py).
#
# Uses $RELAIS_BIN, default target/debug/relais (honours CARGO_TARGET_DIR).
# Libraries are installed from pinned versions into tests/tracking-libs/.venv
# and tests/tracking-libs/node_modules, and reinstalled only when the pins change.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$ROOT/$target_dir"
RELAIS_BIN="${RELAIS_BIN:-$target_dir/debug/relais}"

log() { printf 'tracking-libs: %s\n' "$*" >&2; }

setup_python() {
    local venv="$HERE/.venv" want
    want="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
    if [[ -x "$venv/bin/python" && "$(cat "$venv/.requirements.sha256" 2>/dev/null)" == "$want" ]]; then
        return 0
    fi
    log "installing Python libraries into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-input -r "$HERE/requirements.txt"
    echo "$want" >"$venv/.requirements.sha256"
}

setup_node() {
    local want
    want="$(cat "$HERE/package.json" "$HERE/package-lock.json" | sha256sum | cut -d' ' -f1)"
    if [[ -d "$HERE/node_modules/@segment/analytics-node" &&
        "$(cat "$HERE/node_modules/.relais-lock.sha256" 2>/dev/null)" == "$want" ]]; then
        return 0
    fi
    log "installing Node libraries into $HERE/node_modules"
    (cd "$HERE" && npm ci --silent --no-audit --no-fund)
    echo "$want" >"$HERE/node_modules/.relais-lock.sha256"
}

free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

if [[ ! -x "$RELAIS_BIN" ]]; then
    log "relais binary not found at $RELAIS_BIN (run cargo build first)"
    exit 1
fi

setup_python
setup_node

DATA="$(mktemp -d)"
SERVER_LOG="$(mktemp)"
SERVER_PID=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        # Give it 10 s to shut down gracefully, then force it.
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf -- "$DATA" "$SERVER_LOG"
}
trap cleanup EXIT

show_server_log() {
    log "last lines of the relais server log:"
    tail -n 60 "$SERVER_LOG" >&2 || true
}

ADMIN="$("$RELAIS_BIN" keys create --role admin --data "$DATA")"
INGEST="$("$RELAIS_BIN" keys create --role ingest --data "$DATA")"
if [[ -z "$ADMIN" || -z "$INGEST" ]]; then
    log "relais keys create printed no key"
    exit 1
fi

PORT="$(free_port)"
BASE_URL="http://127.0.0.1:$PORT"
"$RELAIS_BIN" serve --data "$DATA" --listen "127.0.0.1:$PORT" >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

# Wait up to 30 s for GET /healthz to answer 200.
if ! python3 - "$BASE_URL/healthz" "$SERVER_PID" <<'PY'
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("relais serve exited before answering /healthz")
    try:
        with urllib.request.urlopen(url, timeout=2) as res:
            if res.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit("relais did not answer 200 on /healthz within 30 s")
PY
then
    show_server_log
    exit 1
fi

# label, library, user id, email
CASES=(
    "segment-python segment py-seg-1 segment-python@example.fr"
    "rudder-python rudder py-rud-1 rudder-python@example.fr"
    "segment-node node node-seg-1 segment-node@example.fr"
)

verify_args=()
for case in "${CASES[@]}"; do
    read -r label lib user_id email <<<"$case"
    rc=0
    if [[ "$lib" == node ]]; then
        timeout 120 node "$HERE/send_node.mjs" --host "$BASE_URL" --write-key "$INGEST" \
            --user-id "$user_id" --email "$email" || rc=$?
    else
        timeout 120 "$HERE/.venv/bin/python" "$HERE/send_python.py" "$lib" --host "$BASE_URL" \
            --write-key "$INGEST" --user-id "$user_id" --email "$email" || rc=$?
    fi
    [[ "$rc" -eq 0 ]] || log "$label: sender exited with status $rc"
    verify_args+=(--case "$label" "$user_id" "$email" "$rc")
done

rc=0
python3 "$HERE/verify.py" --base-url "$BASE_URL" --admin-key "$ADMIN" "${verify_args[@]}" || rc=$?
if [[ "$rc" -ne 0 ]]; then
    show_server_log
fi
exit "$rc"
