#!/usr/bin/env python3
"""A three-condition segment over a Parquet file of profile facts with DuckDB: the
peer of the segment part of `relais bench segments`.

The facts are loaded into an in-memory table first (untimed), as relais holds its
fact table in memory; then the segment's query runs --runs times and the median
time is printed, with the member count and the sum of member row ids (so the
caller checks that both found the same members), as the last line, JSON.
"""

import argparse
import json
import statistics
import time

import duckdb

QUERY = """
SELECT count(*), coalesce(sum(row_id), 0) FROM facts
WHERE orders_90d >= 2 AND last_channel = 'store' AND city IN ('Lyon', 'Nantes')
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parquet", help="Parquet file of facts: row_id, orders_90d, last_channel, city")
    parser.add_argument("--threads", type=int, help="DuckDB threads (default: DuckDB's own, the machine's cores)")
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()

    con = duckdb.connect()
    if args.threads:
        con.execute(f"SET threads = {int(args.threads)}")
    path = args.parquet.replace("'", "''")
    con.execute(f"CREATE TABLE facts AS SELECT * FROM read_parquet('{path}')")
    times = []
    answer = None
    for _ in range(args.runs):
        started = time.perf_counter()
        answer = con.execute(QUERY).fetchone()
        times.append(time.perf_counter() - started)
    print(json.dumps({
        "seconds": statistics.median(times),
        "members": answer[0],
        "row_id_sum": int(answer[1]),
        "duckdb": duckdb.__version__,
    }))


if __name__ == "__main__":
    main()
