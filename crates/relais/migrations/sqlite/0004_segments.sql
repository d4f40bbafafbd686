-- Segments (issue 6): saved definitions, live memberships, RFM scores as traits.

-- One row per saved segment: its source in the segment language (checked
-- when saved, never pasted into SQL) and its size at the last evaluation.
CREATE TABLE segments (
    segment_id    TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    source        TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    refreshed_at  INTEGER,
    members       INTEGER NOT NULL DEFAULT 0
);

-- Who is in which segment now, since when. Keyed by customer first, so the
-- memberships of one person sit with their other rows.
CREATE TABLE segment_members (
    customer_id   TEXT NOT NULL,
    segment_id    TEXT NOT NULL,
    entered_at    INTEGER NOT NULL,
    PRIMARY KEY (customer_id, segment_id)
) WITHOUT ROWID;
CREATE INDEX segment_members_by_segment ON segment_members (segment_id, customer_id);

-- Each buyer's scores from the last refresh: RFM (quintiles need the whole
-- base, so they are stored, not folded per event) and lifetime value.
CREATE TABLE customer_scores (
    customer_id   TEXT PRIMARY KEY,
    r             INTEGER NOT NULL,
    f             INTEGER NOT NULL,
    m             INTEGER NOT NULL,
    rfm_group     TEXT NOT NULL,
    -- Expected value over the next 52 weeks, minor units; NULL when the
    -- models could not be fitted (too little data).
    clv_minor     INTEGER,
    scored_at     INTEGER NOT NULL
) WITHOUT ROWID;

-- Each segment's size and mean lifetime value on each day it was refreshed,
-- for trends.
CREATE TABLE segment_snapshots (
    segment_id     TEXT NOT NULL,
    day            TEXT NOT NULL,
    members        INTEGER NOT NULL,
    clv_mean_minor INTEGER,
    taken_at       INTEGER NOT NULL,
    PRIMARY KEY (segment_id, day)
) WITHOUT ROWID;

-- Typologies: named sets of segments the customer room follows.
CREATE TABLE typologies (
    typology_id   TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    segments      TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
