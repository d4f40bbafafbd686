-- Privacy (issue 4): encryption at rest, lookup tokens, erasures.
-- Personal values are sealed with the customer's data key; identifiers are found by a keyed-hash token.
-- Citus: keyring is a reference table; data_keys is distributed by customer_id.

CREATE TABLE keyring (
    name               TEXT PRIMARY KEY,
    wrapped            BYTEA NOT NULL,
    master_fingerprint TEXT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    rotated_at         TIMESTAMPTZ
);

CREATE TABLE data_keys (
    customer_id   TEXT PRIMARY KEY,
    wrapped       BYTEA NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE customers ADD COLUMN sealed BYTEA;
ALTER TABLE identifiers ADD COLUMN value TEXT;
ALTER TABLE identifiers ADD COLUMN sealed BYTEA;
ALTER TABLE events ADD COLUMN sealed BYTEA;

-- Erasures carried out (data-subject rights). No personal data: the profile ids
-- erased (random, linked to nothing once erased) and counts; a restored backup
-- re-applies them.
CREATE TABLE erasures (
    erasure_id    TEXT PRIMARY KEY,
    erased_at     TIMESTAMPTZ NOT NULL,
    customer_ids  TEXT NOT NULL,
    profiles      INTEGER NOT NULL,
    identifiers   INTEGER NOT NULL,
    events        INTEGER NOT NULL,
    keys          INTEGER NOT NULL
);

-- The audit log: append-only and hash-chained (HMAC with the audit key, which
-- only the master key unwraps), cut into segments — one per writing process
-- and day — so several processes append without a global lock and retention
-- removes whole closed segments. The latest head of each segment is also kept
-- outside the database. No personal data: people are referred to by profile id.
CREATE TABLE audit_segments (
    segment_id   TEXT PRIMARY KEY,
    process      TEXT NOT NULL,
    day          TEXT NOT NULL,
    opened_at    TIMESTAMPTZ NOT NULL,
    closed_at    TIMESTAMPTZ,
    records      BIGINT NOT NULL DEFAULT 0,
    last_hash    BYTEA,
    purged_at    TIMESTAMPTZ
);
CREATE TABLE audit_log (
    segment_id   TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    at           TIMESTAMPTZ NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    subject      TEXT,
    detail       TEXT NOT NULL,
    prev_hash    BYTEA NOT NULL,
    hash         BYTEA NOT NULL,
    PRIMARY KEY (segment_id, seq)
);
CREATE INDEX audit_by_subject ON audit_log (subject) WHERE subject IS NOT NULL;

-- Consents: dated facts per purpose and channel, with their proof (sealed: the
-- IP address and user agent are personal). Never updated: the state at a date
-- is the latest fact then.
CREATE TABLE consents (
    customer_id     TEXT NOT NULL,
    consent_id      TEXT NOT NULL,
    purpose         TEXT NOT NULL,
    channel         TEXT NOT NULL,
    granted         BOOLEAN NOT NULL,
    at              TIMESTAMPTZ NOT NULL,
    source          TEXT NOT NULL,
    wording_version TEXT NOT NULL,
    proof           BYTEA NOT NULL,
    recorded_by     TEXT NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (customer_id, consent_id)
);

-- Links from e-mails (double opt-in) already used: each works once.
CREATE TABLE consent_tokens (
    token_id      TEXT PRIMARY KEY,
    used_at       TIMESTAMPTZ NOT NULL
);

-- Field paths seen in events that no data-class mapping names (personal by
-- default): the security report lists them for someone to classify.
CREATE TABLE unclassified_fields (
    path          TEXT PRIMARY KEY,
    first_seen    TIMESTAMPTZ NOT NULL
);

-- Data-subject rights requests and their legal deadline. No personal data: the
-- person is referred to by profile id, cleared when they are erased.
CREATE TABLE rights_requests (
    request_id    TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    customer_id   TEXT,
    received_at   TIMESTAMPTZ NOT NULL,
    due_at        TIMESTAMPTZ NOT NULL,
    status        TEXT NOT NULL,
    completed_at  TIMESTAMPTZ,
    outcome       TEXT NOT NULL DEFAULT '{}',
    recorded_by   TEXT NOT NULL
);
CREATE INDEX rights_requests_open ON rights_requests (status, due_at);

-- How far each class's retention purge has gone: events before this instant
-- no longer hold the class's values.
CREATE TABLE retention_marks (
    class          TEXT PRIMARY KEY,
    purged_before  TIMESTAMPTZ NOT NULL
);

-- Search by name without names in clear: each word of a person's name as a
-- keyed hash (the index key), pointing at their profile. Exact words only.
CREATE TABLE name_tokens (
    token         TEXT NOT NULL,
    customer_id   TEXT NOT NULL,
    PRIMARY KEY (token, customer_id)
);
CREATE INDEX name_tokens_by_customer ON name_tokens (customer_id);
