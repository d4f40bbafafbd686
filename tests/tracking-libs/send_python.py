"""Send identify + track + page with a real Python tracking library.

Usage: send_python.py {segment|rudder} --host URL --write-key KEY --user-id ID --email EMAIL

Uses each library the way its README tells users to (module-level settings,
batching consumer thread, flush + shutdown at the end) and exits non-zero if
the library reported any delivery error through its `on_error` callback.
Set TRACKING_DEBUG=1 to see each library's own debug log.
"""

import argparse
import logging
import os
import sys

TRAIT_FIRST_NAME = "Ana"
TRACK_EVENT = "Order Completed"
TRACK_PROPERTIES = {"order_id": "o-1", "total": 42.5, "currency": "EUR"}
PAGE_NAME = "Checkout"
PAGE_PROPERTIES = {"path": "/checkout", "title": "Checkout"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("library", choices=["segment", "rudder"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--write-key", required=True)
    parser.add_argument("--user-id", required=True)
    parser.add_argument("--email", required=True)
    args = parser.parse_args()

    debug = os.environ.get("TRACKING_DEBUG") == "1"
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr)

    errors = []

    def on_error(error, batch):
        errors.append(error)
        print(
            f"send_python[{args.library}]: delivery of {len(batch)} message(s) failed: {error!r}",
            file=sys.stderr,
        )

    if args.library == "segment":
        import segment.analytics as analytics

        analytics.write_key = args.write_key
        analytics.host = args.host
    else:
        import rudderstack.analytics as analytics

        analytics.write_key = args.write_key
        analytics.dataPlaneUrl = args.host

    analytics.on_error = on_error
    analytics.debug = debug
    # Fail within seconds instead of retrying with backoff for minutes.
    analytics.max_retries = 2
    analytics.timeout = 10

    traits = {"email": args.email, "first_name": TRAIT_FIRST_NAME}
    analytics.identify(args.user_id, traits)
    analytics.track(args.user_id, TRACK_EVENT, dict(TRACK_PROPERTIES))
    analytics.page(args.user_id, name=PAGE_NAME, properties=dict(PAGE_PROPERTIES))

    analytics.flush()
    analytics.shutdown()

    if errors:
        print(f"send_python[{args.library}]: {len(errors)} delivery error(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
