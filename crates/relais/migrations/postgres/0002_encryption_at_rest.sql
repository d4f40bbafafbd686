-- Encryption at rest (privacy issue): personal values are sealed with the
-- customer's data key; identifiers are found by a keyed-hash token.
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
