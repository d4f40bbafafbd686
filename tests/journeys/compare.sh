#!/usr/bin/env bash
# Attribution agreement with ChannelAttribution (REFERENCES.md section 3), run by
# .ci/run: installs the peers (bench/peers/install.sh, PyPI), then compare.py runs
# the built binary and ChannelAttribution on the same seeded paths.
# Uses $RELAIS_BIN, default target/debug/relais (honours CARGO_TARGET_DIR).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$ROOT/$target_dir"
RELAIS_BIN="${RELAIS_BIN:-$target_dir/debug/relais}"

bash "$ROOT/bench/peers/install.sh" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$ROOT/bench/peers/.venv/bin/python" "$HERE/compare.py" "$RELAIS_BIN" "$work"
