-- Segments (issue 6): saved definitions, live memberships, RFM scores as traits.
-- Distribution (Citus): segments is a reference table; segment_members and
-- rfm_scores are distributed by customer_id.

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

-- Each buyer's RFM scores from the last scoring (quintiles need the whole
-- base, so they are stored, not folded per event).
CREATE TABLE rfm_scores (
    customer_id   TEXT PRIMARY KEY,
    r             SMALLINT NOT NULL,
    f             SMALLINT NOT NULL,
    m             SMALLINT NOT NULL,
    rfm_group     TEXT NOT NULL,
    scored_at     TIMESTAMPTZ NOT NULL
);
