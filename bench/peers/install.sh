#!/usr/bin/env bash
# Install the peer tools that `relais bench` compares against, in a virtual
# environment beside this script (bench/peers/.venv). The server never needs them.
#   DuckDB (PyPI), for `relais bench segments` (RFM scores from a Parquet file,
#   and a three-condition segment over a million profiles).
#   ChannelAttribution (PyPI, built from source: a C++ compiler is needed), for
#   `relais bench journeys` and the attribution test (tests/journeys/compare.sh);
#   its module imports matplotlib without declaring it, so matplotlib is pinned too.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DUCKDB_VERSION="${DUCKDB_VERSION:-2.0.0}"
CHANNELATTRIBUTION_VERSION="${CHANNELATTRIBUTION_VERSION:-2.2.5}"
MATPLOTLIB_VERSION="${MATPLOTLIB_VERSION:-3.11.2}"

if [ ! -x "$here/.venv/bin/python" ]; then
    python3 -m venv "$here/.venv"
fi
"$here/.venv/bin/pip" install --quiet --disable-pip-version-check \
    "duckdb==$DUCKDB_VERSION" \
    "ChannelAttribution==$CHANNELATTRIBUTION_VERSION" \
    "matplotlib==$MATPLOTLIB_VERSION"
"$here/.venv/bin/python" -c 'import duckdb; print("duckdb", duckdb.__version__)'
"$here/.venv/bin/python" -c 'import importlib.metadata as m, ChannelAttribution; print("ChannelAttribution", m.version("ChannelAttribution"))' | grep -v '^\*\*\*'
