-- The single customer database: profiles, identifiers, events, keys (SQLite).
CREATE TABLE customers (
    customer_id   TEXT PRIMARY KEY,
    created_at    INTEGER NOT NULL,
    merged_into   TEXT,
    merged_at     INTEGER,
    profile       TEXT NOT NULL DEFAULT '{}',
    -- Computed traits in a compact binary form (postcard): rewritten at every
    -- event, so its size decides how many pages each commit writes.
    traits        BLOB,
    updated_at    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX customers_by_merged_into ON customers (merged_into) WHERE merged_into IS NOT NULL;

CREATE TABLE identifiers (
    identifier    TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    customer_id   TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    people_seen   INTEGER NOT NULL DEFAULT 1,
    shared        INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX identifiers_by_customer ON identifiers (customer_id);

-- People other than the owner seen with an identifier (a kiosk, a family tablet).
CREATE TABLE identifier_sightings (
    identifier    TEXT NOT NULL,
    customer_id   TEXT NOT NULL,
    at            INTEGER NOT NULL,
    PRIMARY KEY (identifier, customer_id)
) WITHOUT ROWID;

-- Message ids seen per source, for deduplication. Rows are small on purpose
-- (the key is random, so each commit dirties many pages): the event they
-- stored is found through its row number in `events`.
CREATE TABLE message_ids (
    source        TEXT NOT NULL,
    message_id    TEXT NOT NULL,
    event_seq     INTEGER NOT NULL,
    received_at   INTEGER NOT NULL,
    PRIMARY KEY (source, message_id)
) WITHOUT ROWID;

CREATE TABLE events (
    seq                INTEGER PRIMARY KEY,
    customer_id        TEXT NOT NULL,
    event_id           TEXT NOT NULL,
    source             TEXT NOT NULL,
    message_id         TEXT NOT NULL,
    type               TEXT NOT NULL,
    name               TEXT,
    channel            TEXT NOT NULL,
    ts                 INTEGER NOT NULL,
    received_at        INTEGER NOT NULL,
    sent_at            INTEGER,
    original_timestamp INTEGER,
    user_id            TEXT,
    anonymous_id       TEXT,
    store              TEXT,
    order_id           TEXT,
    amount_minor       INTEGER,
    currency           TEXT,
    computed           INTEGER NOT NULL DEFAULT 0,
    properties         TEXT NOT NULL,
    context            TEXT NOT NULL,
    traits             TEXT NOT NULL,
    extra              TEXT NOT NULL,
    identifiers        TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX events_by_customer ON events (customer_id, ts, event_id);

CREATE TABLE customer_days (
    customer_id   TEXT NOT NULL,
    day           TEXT NOT NULL,
    orders        INTEGER NOT NULL,
    revenue_minor INTEGER NOT NULL,
    PRIMARY KEY (customer_id, day)
) WITHOUT ROWID;

CREATE TABLE merges (
    merge_id      TEXT PRIMARY KEY,
    survivor_id   TEXT NOT NULL,
    merged_id     TEXT NOT NULL,
    at            INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    identifiers   TEXT NOT NULL,
    undone_at     INTEGER
);
CREATE INDEX merges_by_survivor ON merges (survivor_id);

CREATE TABLE identity_conflicts (
    customer_id       TEXT NOT NULL,
    other_customer_id TEXT NOT NULL,
    kind              TEXT NOT NULL,
    message_id        TEXT NOT NULL,
    at                INTEGER NOT NULL,
    PRIMARY KEY (customer_id, other_customer_id, kind)
) WITHOUT ROWID;

CREATE TABLE accounts (
    group_id      TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL,
    traits        TEXT NOT NULL DEFAULT '{}',
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE account_members (
    customer_id   TEXT NOT NULL,
    group_id      TEXT NOT NULL,
    joined_at     INTEGER NOT NULL,
    PRIMARY KEY (customer_id, group_id)
) WITHOUT ROWID;

CREATE TABLE api_keys (
    key_hash      TEXT PRIMARY KEY,
    key_id        TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL,
    source        TEXT NOT NULL,
    name          TEXT,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
);

-- Side effects (e-mail, later webhooks and device messages) wait here until the
-- delivery worker has sent them (transactional outbox).
CREATE TABLE outbox (
    outbox_id       TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    customer_id     TEXT,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER
) WITHOUT ROWID;
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
