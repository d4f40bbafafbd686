#!/usr/bin/env python3
"""RFM scores of a Parquet file of events with DuckDB: the peer of `relais bench segments`.

Reads the file with DuckDB SQL, folds the purchases (`event_type = 'Order Completed'`)
per customer and scores them with NTILE(5), with the orderings and tie-breaks of
relais_domain::rfm (REFERENCES.md section 2). The time measured is the query alone,
reading the file included, into an in-memory table; it is printed as the last line,
JSON. With --out, the scores are then written as CSV sorted by customer id (untimed).
"""

import argparse
import json
import time

import duckdb

QUERY = """
CREATE TABLE scores AS
WITH totals AS (
    SELECT customer_id,
           ({now} - epoch_us(max("timestamp"))) // 1000000 AS recency_seconds,
           count(*) AS frequency,
           sum(amount_minor) AS monetary
    FROM read_parquet('{path}')
    WHERE event_type = 'Order Completed'
    GROUP BY customer_id
)
SELECT customer_id, recency_seconds, frequency, monetary,
       ntile(5) OVER (ORDER BY recency_seconds DESC, customer_id) AS r,
       ntile(5) OVER (ORDER BY frequency, customer_id) AS f,
       ntile(5) OVER (ORDER BY monetary, customer_id) AS m
FROM totals
"""


def quoted(text):
    """A SQL string literal's body."""
    return text.replace("'", "''")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parquet", help="Parquet file of events")
    parser.add_argument("--now-micros", type=int, required=True, help="reference instant, microseconds since the epoch")
    parser.add_argument("--threads", type=int, help="DuckDB threads (default: DuckDB's own, the machine's cores)")
    parser.add_argument("--out", help="write the scores here as CSV, sorted by customer id")
    args = parser.parse_args()

    con = duckdb.connect()
    if args.threads:
        con.execute(f"SET threads = {int(args.threads)}")
    query = QUERY.format(now=int(args.now_micros), path=quoted(args.parquet))
    started = time.perf_counter()
    con.execute(query)
    seconds = time.perf_counter() - started

    customers = con.execute("SELECT count(*) FROM scores").fetchone()[0]
    if args.out:
        con.execute(
            f"COPY (SELECT * FROM scores ORDER BY customer_id) TO '{quoted(args.out)}' (HEADER, DELIMITER ',')"
        )
    print(json.dumps({"seconds": seconds, "customers": customers, "duckdb": duckdb.__version__}))


if __name__ == "__main__":
    main()
