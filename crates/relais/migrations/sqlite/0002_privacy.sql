-- Privacy (issue 4): encryption at rest, lookup tokens, erasures.
-- Personal values are sealed with the customer's data key; identifiers are found by a keyed-hash token.

-- System keys (key-encryption key, index key), each wrapped by the master key,
-- which never enters the database; its fingerprint tells a wrong key at start.
CREATE TABLE keyring (
    name               TEXT PRIMARY KEY,
    wrapped            BLOB NOT NULL,
    master_fingerprint TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    rotated_at         INTEGER
);

-- One data key per customer, wrapped by the key-encryption key. Erasure deletes
-- the row (crypto-shredding): every value sealed with it becomes unreadable.
CREATE TABLE data_keys (
    customer_id   TEXT PRIMARY KEY,
    wrapped       BLOB NOT NULL,
    created_at    INTEGER NOT NULL
) WITHOUT ROWID;

-- Profile fields of encrypted classes, sealed; `profile` keeps the clear ones.
ALTER TABLE customers ADD COLUMN sealed BLOB;
-- The identifier's value: in clear for clear classes, sealed otherwise;
-- `identifier` holds the lookup token (kind and keyed hash).
ALTER TABLE identifiers ADD COLUMN value TEXT;
ALTER TABLE identifiers ADD COLUMN sealed BLOB;
-- The payload fields of encrypted classes (and userId, anonymousId), sealed.
ALTER TABLE events ADD COLUMN sealed BLOB;

-- Erasures carried out (data-subject rights). No personal data: the profile ids
-- erased (random, linked to nothing once erased) and counts; a restored backup
-- re-applies them.
CREATE TABLE erasures (
    erasure_id    TEXT PRIMARY KEY,
    erased_at     INTEGER NOT NULL,
    customer_ids  TEXT NOT NULL,
    profiles      INTEGER NOT NULL,
    identifiers   INTEGER NOT NULL,
    events        INTEGER NOT NULL,
    keys          INTEGER NOT NULL
);
