#!/usr/bin/env bash
# Install the peer tools that `relais bench` compares against, in a virtual
# environment beside this script (bench/peers/.venv). The server never needs them.
#   DuckDB (PyPI), for `relais bench segments` (RFM scores from a Parquet file,
#   and a three-condition segment over a million profiles).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DUCKDB_VERSION="${DUCKDB_VERSION:-2.0.0}"

if [ ! -x "$here/.venv/bin/python" ]; then
    python3 -m venv "$here/.venv"
fi
"$here/.venv/bin/pip" install --quiet --disable-pip-version-check "duckdb==$DUCKDB_VERSION"
"$here/.venv/bin/python" -c 'import duckdb; print("duckdb", duckdb.__version__)'
