-- The ledger and its lots in time order (SQLite only; PostgreSQL and Citus
-- keep them distributed and clustered by customer).
--
-- On one SQLite file, rows clustered by customer put every transaction on its
-- own page: under till traffic each commit of eight requests rewrote some 120
-- pages, half of them for the ledger and its indexes. Transaction and lot ids
-- are ULIDs, so keyed by them the rows are appended where the last ones went,
-- and the per-member lookups go through one index each. A lot's id is unique
-- per customer only (a lot given back by an unmerge was named after the lot
-- it came from), so the lots keep `customer_id` in their key, after the id.
--
-- Invariants the queries rely on: an entry's and a lot's `customer_id` is the
-- customer of its membership row (memberships never change customer), and a
-- transaction's leg 0 is always on a member account.

CREATE TABLE loyalty_entries_in_time_order (
    customer_id   TEXT NOT NULL,
    tx_id         TEXT NOT NULL,
    leg           INTEGER NOT NULL,
    member_id     TEXT NOT NULL,
    programme_key TEXT NOT NULL,
    account       TEXT NOT NULL,
    points        INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    rule          TEXT,
    event_id      TEXT,
    message_id    TEXT,
    order_id      TEXT,
    store         TEXT,
    basis_minor   INTEGER,
    day           TEXT NOT NULL,
    reason        TEXT NOT NULL,
    expires_on    TEXT,
    actor         TEXT,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (tx_id, leg)
) WITHOUT ROWID;
INSERT INTO loyalty_entries_in_time_order (customer_id, tx_id, leg, member_id, programme_key, account, points, kind,
    rule, event_id, message_id, order_id, store, basis_minor, day, reason, expires_on, actor, created_at)
SELECT customer_id, tx_id, leg, member_id, programme_key, account, points, kind, rule, event_id, message_id,
    order_id, store, basis_minor, day, reason, expires_on, actor, created_at
FROM loyalty_entries ORDER BY tx_id, leg;
DROP TABLE loyalty_entries;
ALTER TABLE loyalty_entries_in_time_order RENAME TO loyalty_entries;
-- Every per-member question (caps, first purchase, an order's history, the
-- tier window, the statement, the checks) starts from the member and its
-- account; the columns after them are read from the index before any row.
CREATE INDEX loyalty_entries_by_member ON loyalty_entries (member_id, account, rule, day, kind, order_id);
-- The programme's report by day; new entries go to the end of their day.
CREATE INDEX loyalty_entries_by_programme ON loyalty_entries (programme_key, day);

CREATE TABLE loyalty_lots_in_time_order (
    customer_id   TEXT NOT NULL,
    lot_id        TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    points        INTEGER NOT NULL,
    remaining     INTEGER NOT NULL CHECK (remaining >= 0),
    expires_on    TEXT,
    PRIMARY KEY (lot_id, customer_id)
) WITHOUT ROWID;
INSERT INTO loyalty_lots_in_time_order (customer_id, lot_id, member_id, points, remaining, expires_on)
SELECT customer_id, lot_id, member_id, points, remaining, expires_on FROM loyalty_lots ORDER BY lot_id, customer_id;
DROP TABLE loyalty_lots;
ALTER TABLE loyalty_lots_in_time_order RENAME TO loyalty_lots;
-- A member's lots in the order debits take them (soonest expiry first, then
-- oldest), read from the index alone (it holds the key, so `customer_id`
-- too): the lots themselves are spread over time, and a debit reads only the
-- first few.
CREATE INDEX loyalty_lots_by_member ON loyalty_lots (member_id, expires_on, lot_id, remaining);
CREATE INDEX loyalty_lots_expiring ON loyalty_lots (expires_on) WHERE remaining > 0;
