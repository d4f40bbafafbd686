-- Segments (issue 6): saved definitions, live memberships, RFM scores as traits.
-- Distribution (Citus): segments, segment_snapshots and typologies are
-- reference tables; segment_members and customer_scores are distributed by
-- customer_id.

-- One row per saved segment: its source in the segment language (checked
-- when saved, never pasted into SQL) and its size at the last evaluation.
CREATE TABLE segments (
    segment_id    TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    source        TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    refreshed_at  TIMESTAMPTZ,
    members       BIGINT NOT NULL DEFAULT 0
);

-- Who is in which segment now, since when.
CREATE TABLE segment_members (
    customer_id   TEXT NOT NULL,
    segment_id    TEXT NOT NULL,
    entered_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (customer_id, segment_id)
);
CREATE INDEX segment_members_by_segment ON segment_members (segment_id, customer_id);

-- Each buyer's scores from the last refresh: RFM (quintiles need the whole
-- base, so they are stored, not folded per event) and lifetime value.
CREATE TABLE customer_scores (
    customer_id   TEXT PRIMARY KEY,
    r             SMALLINT NOT NULL,
    f             SMALLINT NOT NULL,
    m             SMALLINT NOT NULL,
    rfm_group     TEXT NOT NULL,
    -- Expected value over the next 52 weeks, minor units; NULL when the
    -- models could not be fitted (too little data).
    clv_minor     BIGINT,
    scored_at     TIMESTAMPTZ NOT NULL
);

-- Each segment's size and mean lifetime value on each day it was refreshed,
-- for trends.
CREATE TABLE segment_snapshots (
    segment_id     TEXT NOT NULL,
    day            DATE NOT NULL,
    members        BIGINT NOT NULL,
    clv_mean_minor BIGINT,
    taken_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (segment_id, day)
);

-- Typologies: named sets of segments the customer room follows.
CREATE TABLE typologies (
    typology_id   TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    segments      TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);
