"""ChannelAttribution's markov_model with its default settings on a path file,
timed from reading the file to the result (interpreter start and imports
excluded, as relais's own timing excludes process start).

Usage: markov_ca.py PATHS.csv ORDER. Prints one JSON line: read_seconds,
model_seconds, total_seconds, version, and the conversions per channel.
"""

import contextlib
import importlib.metadata
import io
import json
import sys
import time

import pandas as pd

with contextlib.redirect_stdout(io.StringIO()):
    from ChannelAttribution import markov_model


def main():
    path, order = sys.argv[1], int(sys.argv[2])
    started = time.perf_counter()
    data = pd.read_csv(path)
    read = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        # Defaults (nsim_start=1e5, max_step=None, nfold=10, ncore=1, seed=0…);
        # verbose and the banner off: they only print.
        result = markov_model(
            data, "path", "total_conversions", var_value="total_conversion_value", var_null="total_null",
            order=order, verbose=False, flg_pro=False,
        )
    done = time.perf_counter()
    print(json.dumps({
        "read_seconds": read - started,
        "model_seconds": done - read,
        "total_seconds": done - started,
        "version": importlib.metadata.version("ChannelAttribution"),
        "conversions": dict(zip(result["channel_name"], map(float, result["total_conversions"]))),
    }))


if __name__ == "__main__":
    main()
