-- The single customer database: profiles, identifiers, events, keys (PostgreSQL).
-- Distribution (Citus): customer-scoped tables by customer_id; identifiers by
-- identifier; message_ids by message_id; accounts by group_id; api_keys reference.
CREATE TABLE customers (
    customer_id   TEXT PRIMARY KEY,
    created_at    TIMESTAMPTZ NOT NULL,
    merged_into   TEXT,
    merged_at     TIMESTAMPTZ,
    profile       JSONB NOT NULL DEFAULT '{}',
    traits        JSONB NOT NULL DEFAULT '{}',
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX customers_by_merged_into ON customers (merged_into) WHERE merged_into IS NOT NULL;

CREATE TABLE identifiers (
    identifier    TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    customer_id   TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    people_seen   INTEGER NOT NULL DEFAULT 1,
    shared        BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX identifiers_by_customer ON identifiers (customer_id);

-- People other than the owner seen with an identifier (a kiosk, a family tablet).
-- Citus: by identifier, co-located with identifiers.
CREATE TABLE identifier_sightings (
    identifier    TEXT NOT NULL,
    customer_id   TEXT NOT NULL,
    at            TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (identifier, customer_id)
);

CREATE TABLE message_ids (
    source        TEXT NOT NULL,
    message_id    TEXT NOT NULL,
    customer_id   TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    received_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (message_id, source)
);

CREATE TABLE events (
    customer_id        TEXT NOT NULL,
    event_id           TEXT NOT NULL,
    source             TEXT NOT NULL,
    message_id         TEXT NOT NULL,
    type               TEXT NOT NULL,
    name               TEXT,
    channel            TEXT NOT NULL,
    ts                 TIMESTAMPTZ NOT NULL,
    received_at        TIMESTAMPTZ NOT NULL,
    sent_at            TIMESTAMPTZ,
    original_timestamp TIMESTAMPTZ,
    user_id            TEXT,
    anonymous_id       TEXT,
    store              TEXT,
    order_id           TEXT,
    amount_minor       BIGINT,
    currency           TEXT,
    computed           BOOLEAN NOT NULL DEFAULT FALSE,
    properties         JSONB NOT NULL,
    context            JSONB NOT NULL,
    traits             JSONB NOT NULL,
    extra              JSONB NOT NULL,
    identifiers        JSONB NOT NULL DEFAULT '[]',
    PRIMARY KEY (customer_id, ts, event_id)
);

CREATE TABLE customer_days (
    customer_id   TEXT NOT NULL,
    day           DATE NOT NULL,
    orders        BIGINT NOT NULL,
    revenue_minor BIGINT NOT NULL,
    PRIMARY KEY (customer_id, day)
);

CREATE TABLE merges (
    survivor_id   TEXT NOT NULL,
    merge_id      TEXT NOT NULL,
    merged_id     TEXT NOT NULL,
    at            TIMESTAMPTZ NOT NULL,
    reason        TEXT NOT NULL,
    identifiers   JSONB NOT NULL,
    undone_at     TIMESTAMPTZ,
    PRIMARY KEY (survivor_id, merge_id)
);

CREATE TABLE identity_conflicts (
    customer_id       TEXT NOT NULL,
    other_customer_id TEXT NOT NULL,
    kind              TEXT NOT NULL,
    message_id        TEXT NOT NULL,
    at                TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (customer_id, other_customer_id, kind)
);

CREATE TABLE accounts (
    group_id      TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL,
    traits        JSONB NOT NULL DEFAULT '{}',
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE account_members (
    customer_id   TEXT NOT NULL,
    group_id      TEXT NOT NULL,
    joined_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (customer_id, group_id)
);

CREATE TABLE api_keys (
    key_hash      TEXT PRIMARY KEY,
    key_id        TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL,
    source        TEXT NOT NULL,
    name          TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    revoked_at    TIMESTAMPTZ
);

-- Side effects (e-mail, later webhooks and device messages) wait here until the
-- delivery worker has sent them (transactional outbox). Citus: by outbox_id.
CREATE TABLE outbox (
    outbox_id       TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    customer_id     TEXT,
    payload         JSONB NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    lease_until     TIMESTAMPTZ,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    delivered_at    TIMESTAMPTZ
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
