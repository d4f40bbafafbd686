"""Check, through relais's admin API, what the tracking libraries sent.

Usage:
  verify.py --base-url URL --admin-key KEY --case LABEL USER_ID EMAIL SEND_RC [--case ...]

For each case (one per tracking library) it checks that:
  - GET /api/v1/customers?identifier=user_id:<USER_ID> answers 200 with a JSON
    object whose `id` starts with `cus_`;
  - GET /api/v1/customers/<id>/events?limit=100 answers
    {"events": [...], "next_cursor": ...} with exactly 3 events, of types
    identify, track and page, each with messageId/type/name/channel/timestamp,
    the track named "Order Completed";
  - GET /api/v1/customers?identifier=email:<EMAIL> gives the same id.
A case whose sender exited non-zero (SEND_RC != 0) fails as well.

Ingestion may be asynchronous, so each case is retried until it passes or
VERIFY_TIMEOUT seconds (default 15) have elapsed. Only the standard library is
used. Ends with an `N passed, N failed` line; exits 1 on any failure.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

EXPECTED_TYPES = {"identify", "track", "page"}
TRACK_NAME = "Order Completed"
EVENT_KEYS = ("messageId", "type", "name", "channel", "timestamp")


class CheckFailed(Exception):
    pass


def get_json(base_url, admin_key, path, params=None):
    url = base_url.rstrip("/") + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    req = urllib.request.Request(
        url,
        headers={"Authorization": f"Bearer {admin_key}", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            status, body = res.status, res.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        raise CheckFailed(f"GET {url}: {e}") from e
    if status != 200:
        raise CheckFailed(f"GET {url}: HTTP {status}: {body[:300]!r}")
    try:
        return json.loads(body)
    except ValueError as e:
        raise CheckFailed(f"GET {url}: body is not JSON: {body[:300]!r}") from e


def find_customer_id(base_url, admin_key, identifier):
    customer = get_json(base_url, admin_key, "/api/v1/customers", {"identifier": identifier})
    if not isinstance(customer, dict):
        raise CheckFailed(f"customer lookup {identifier}: expected a JSON object, got {customer!r:.300}")
    cid = customer.get("id")
    if not isinstance(cid, str) or not cid.startswith("cus_"):
        raise CheckFailed(f"customer lookup {identifier}: top-level id {cid!r} does not start with cus_")
    return cid


def check_case(base_url, admin_key, user_id, email):
    cid = find_customer_id(base_url, admin_key, f"user_id:{user_id}")

    page = get_json(
        base_url, admin_key, f"/api/v1/customers/{urllib.parse.quote(cid, safe='')}/events", {"limit": "100"}
    )
    if not isinstance(page, dict) or not isinstance(page.get("events"), list) or "next_cursor" not in page:
        raise CheckFailed(f"events of {cid}: expected {{events: [...], next_cursor: ...}}, got {page!r:.300}")
    events = page["events"]
    for ev in events:
        if not isinstance(ev, dict):
            raise CheckFailed(f"events of {cid}: event is not an object: {ev!r:.300}")
        missing = [k for k in EVENT_KEYS if k not in ev]
        if missing:
            raise CheckFailed(f"events of {cid}: event lacks {missing}: {json.dumps(ev)[:300]}")
    types = sorted(str(ev.get("type")) for ev in events)
    if len(events) != 3 or set(types) != EXPECTED_TYPES:
        raise CheckFailed(f"events of {cid}: expected 3 events of types {sorted(EXPECTED_TYPES)}, got {types}")
    track = next(ev for ev in events if ev.get("type") == "track")
    if track.get("name") != TRACK_NAME:
        raise CheckFailed(f"events of {cid}: track name is {track.get('name')!r}, expected {TRACK_NAME!r}")
    if len({ev["messageId"] for ev in events}) != 3:
        raise CheckFailed(f"events of {cid}: messageIds are not distinct")

    by_email = find_customer_id(base_url, admin_key, f"email:{email}")
    if by_email != cid:
        raise CheckFailed(f"email:{email} resolves to {by_email}, user_id:{user_id} to {cid}")
    return cid


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--admin-key", required=True)
    parser.add_argument(
        "--case", nargs=4, action="append", required=True, metavar=("LABEL", "USER_ID", "EMAIL", "SEND_RC")
    )
    args = parser.parse_args()
    timeout = float(os.environ.get("VERIFY_TIMEOUT", "15"))

    passed = failed = 0
    for label, user_id, email, send_rc in args.case:
        if send_rc != "0":
            failed += 1
            print(f"FAIL {label}: sender exited with status {send_rc}")
            continue
        deadline = time.monotonic() + timeout
        while True:
            try:
                cid = check_case(args.base_url, args.admin_key, user_id, email)
            except CheckFailed as e:
                if time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                failed += 1
                print(f"FAIL {label}: {e}")
            else:
                passed += 1
                print(f"ok   {label}: {user_id} -> {cid}, 3 events")
            break

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
