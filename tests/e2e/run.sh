#!/usr/bin/env bash
# End-to-end tests of the pages in a real browser: Debian's chromium, headless,
# driven by playwright-core (pinned in package.json), against the real server
# (the built binary) loaded with the demo data. Screenshots go to
# tests/e2e/screenshots/.
#
# Uses $RELAIS_BIN, default target/debug/relais (honours CARGO_TARGET_DIR).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$ROOT/$target_dir"
RELAIS_BIN="${RELAIS_BIN:-$target_dir/debug/relais}"

log() { printf 'e2e: %s\n' "$*" >&2; }

CHROMIUM="${CHROMIUM:-$(command -v chromium || true)}"
if [[ -z "$CHROMIUM" ]]; then
    log "installing Debian's chromium"
    SUDO=""
    [[ "$(id -u)" -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >/dev/null
    CHROMIUM="$(command -v chromium)"
fi

want="$(sha256sum "$HERE/package.json" "$HERE/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [[ ! -d "$HERE/node_modules/playwright-core" || "$(cat "$HERE/node_modules/.relais-lock.sha256" 2>/dev/null)" != "$want" ]]; then
    log "installing playwright-core"
    (cd "$HERE" && npm ci --no-audit --no-fund --silent)
    echo "$want" >"$HERE/node_modules/.relais-lock.sha256"
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

log "loading a demo (3,000 people)"
"$RELAIS_BIN" demo --no-serve --data "$work/data" --people 3000 --events 150000 >"$work/demo.txt" 2>"$work/demo.log"
RELAIS_API_KEY="$(sed -n 's/^admin API key: //p' "$work/demo.txt")"
RELAIS_EMAIL="$(sed -n 's/^back office: sign in as \(.*\) with password .*/\1/p' "$work/demo.txt")"
RELAIS_PASSWORD="$(sed -n 's/^back office: sign in as .* with password //p' "$work/demo.txt")"
[[ -n "$RELAIS_API_KEY" && -n "$RELAIS_EMAIL" && -n "$RELAIS_PASSWORD" ]] || { cat "$work/demo.txt"; log "the demo printed no credentials"; exit 1; }

"$RELAIS_BIN" serve --data "$work/data" --listen 127.0.0.1:0 >"$work/serve.txt" 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 1 100); do
    grep -q "relais is serving on" "$work/serve.txt" 2>/dev/null && break
    sleep 0.1
done
RELAIS_URL="$(sed -n 's/^relais is serving on \(http:[^ ]*\).*/\1/p' "$work/serve.txt")"
[[ -n "$RELAIS_URL" ]] || { cat "$work/serve.log"; log "the server did not start"; exit 1; }
log "server at $RELAIS_URL"

mkdir -p "$HERE/screenshots"
export RELAIS_URL RELAIS_API_KEY RELAIS_EMAIL RELAIS_PASSWORD CHROMIUM RELAIS_BIN
export RELAIS_DATA="$work/data" SCREENSHOTS="$HERE/screenshots"
node "$HERE/pages.mjs"
