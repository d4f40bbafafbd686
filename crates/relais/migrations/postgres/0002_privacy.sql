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
