-- Loyalty (issue 5, PostgreSQL; Citus: customer-scoped tables by customer_id): programmes, memberships, the double-entry ledger, point lots.

-- Programmes with every version of their rules (the checked definition as
-- JSON). `revision` grows at every change, so writers know when to reload.
-- Citus: reference table (few rows, rarely written).
CREATE TABLE loyalty_programmes (
    programme_key TEXT PRIMARY KEY,
    definition    TEXT NOT NULL,
    revision      BIGINT NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

-- Memberships. The balance is derived from the ledger (the sum of the member's
-- entries) and kept here so a debit reads one row; a test checks they agree.
-- The card number is an identifier of kind `card` (so a till's scan finds the
-- person); `card_token` is its lookup token.
CREATE TABLE loyalty_members (
    customer_id   TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    programme_key TEXT NOT NULL,
    card_token    TEXT NOT NULL,
    balance       BIGINT NOT NULL DEFAULT 0 CHECK (balance >= 0),
    status        TEXT NOT NULL,
    merged_into   TEXT,
    enrolled_at   TIMESTAMPTZ NOT NULL,
    tier          TEXT,
    tier_since    TIMESTAMPTZ,
    downgrade_on  DATE,
    PRIMARY KEY (customer_id, member_id)
);
CREATE UNIQUE INDEX loyalty_members_one_per_programme ON loyalty_members (customer_id, programme_key)
    WHERE status = 'active';
CREATE INDEX loyalty_members_by_id ON loyalty_members (member_id);

-- The ledger: append-only, two entries per transaction (the member's and its
-- counterpart on a programme account), summing to zero.
CREATE TABLE loyalty_entries (
    customer_id   TEXT NOT NULL,
    tx_id         TEXT NOT NULL,
    leg           INTEGER NOT NULL,
    member_id     TEXT NOT NULL,
    programme_key TEXT NOT NULL,
    account       TEXT NOT NULL,
    points        BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    rule          TEXT,
    event_id      TEXT,
    message_id    TEXT,
    order_id      TEXT,
    store         TEXT,
    basis_minor   BIGINT,
    day           DATE NOT NULL,
    reason        TEXT NOT NULL,
    expires_on    DATE,
    actor         TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (customer_id, tx_id, leg)
);
CREATE INDEX loyalty_entries_by_member ON loyalty_entries (customer_id, member_id, rule, day) WHERE leg = 0;
CREATE INDEX loyalty_entries_by_programme ON loyalty_entries (programme_key, kind);
CREATE INDEX loyalty_entries_by_order ON loyalty_entries (customer_id, member_id, order_id)
    WHERE order_id IS NOT NULL AND leg = 0;

-- Points earned together and what is left of them; debits take the lots that
-- expire first. Derived from the ledger like the balance.
CREATE TABLE loyalty_lots (
    customer_id   TEXT NOT NULL,
    lot_id        TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    points        BIGINT NOT NULL,
    remaining     BIGINT NOT NULL CHECK (remaining >= 0),
    expires_on    DATE,
    PRIMARY KEY (customer_id, lot_id)
);
CREATE INDEX loyalty_lots_open ON loyalty_lots (customer_id, member_id) WHERE remaining > 0;
CREATE INDEX loyalty_lots_expiring ON loyalty_lots (expires_on) WHERE remaining > 0;

-- Tier changes: upgrades, downgrade notices (with the day the downgrade
-- takes effect), notices lifted, downgrades; the member's current tier is on
-- its row.
CREATE TABLE loyalty_tier_changes (
    customer_id   TEXT NOT NULL,
    change_id     TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    kind          TEXT NOT NULL,
    from_tier     TEXT,
    to_tier       TEXT,
    effective_on  DATE,
    measured      BIGINT NOT NULL,
    day           DATE NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (customer_id, change_id)
);
CREATE INDEX loyalty_tier_changes_by_member ON loyalty_tier_changes (customer_id, member_id);
CREATE INDEX loyalty_members_downgrades ON loyalty_members (downgrade_on) WHERE downgrade_on IS NOT NULL;
CREATE INDEX loyalty_members_tiered ON loyalty_members (programme_key, member_id) WHERE tier IS NOT NULL;

-- The rewards catalogue. `stock_left` is a counter shared by every member:
-- redeeming a reward with stock is the documented exception to "one customer
-- per transaction" (on Citus a reference table, updated with two-phase commit).
CREATE TABLE loyalty_rewards (
    programme_key TEXT NOT NULL,
    reward_id     TEXT NOT NULL,
    definition    TEXT NOT NULL,
    stock_left    BIGINT CHECK (stock_left >= 0),
    updated_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (programme_key, reward_id)
);

-- Redemptions of rewards: reserved (points and stock held), confirmed, or
-- cancelled (points and stock given back). `allocation` lists the lots the
-- points came from, so a cancellation restores them with their expiry.
CREATE TABLE loyalty_redemptions (
    customer_id   TEXT NOT NULL,
    redemption_id TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    programme_key TEXT NOT NULL,
    reward_id     TEXT NOT NULL,
    points        BIGINT NOT NULL,
    status        TEXT NOT NULL,
    allocation    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (customer_id, redemption_id)
);
CREATE INDEX loyalty_redemptions_by_id ON loyalty_redemptions (redemption_id);

-- Coupon campaigns, with how many codes were issued and used (a counter
-- shared by every member, like reward stock: reference table on Citus).
CREATE TABLE loyalty_coupon_campaigns (
    programme_key TEXT NOT NULL,
    campaign_id   TEXT NOT NULL,
    definition    TEXT NOT NULL,
    codes         BIGINT NOT NULL DEFAULT 0,
    used          BIGINT NOT NULL DEFAULT 0,
    updated_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (programme_key, campaign_id)
);

-- Issued codes, by keyed hash only (a code is a bearer secret); who used
-- each one and for which order. Citus: distributed by code_hash.
CREATE TABLE loyalty_coupon_codes (
    code_hash     TEXT PRIMARY KEY,
    programme_key TEXT NOT NULL,
    campaign_id   TEXT NOT NULL,
    customer_id   TEXT,
    member_id     TEXT,
    order_id      TEXT,
    used_at       TIMESTAMPTZ
);

-- Each member's uses (the per-member limit counts them).
CREATE TABLE loyalty_coupon_uses (
    customer_id   TEXT NOT NULL,
    code_hash     TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    programme_key TEXT NOT NULL,
    campaign_id   TEXT NOT NULL,
    order_id      TEXT,
    day           DATE NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (customer_id, code_hash)
);
CREATE INDEX loyalty_coupon_uses_by_member ON loyalty_coupon_uses (customer_id, member_id, campaign_id);

-- Instant-win draws: what each draw's budget has paid (a counter shared by
-- every member, reference table on Citus), and every play, won or lost, with
-- its roll (a keyed hash of the rule and the event, so it can be recomputed)
-- and the threshold it was compared with.
CREATE TABLE loyalty_draw_budgets (
    programme_key TEXT NOT NULL,
    rule_id       TEXT NOT NULL,
    spent         BIGINT NOT NULL,
    PRIMARY KEY (programme_key, rule_id)
);
CREATE TABLE loyalty_draws (
    customer_id   TEXT NOT NULL,
    draw_id       TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    programme_key TEXT NOT NULL,
    rule_id       TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    roll          TEXT NOT NULL,
    odds          TEXT NOT NULL,
    won           BOOLEAN NOT NULL,
    points        BIGINT NOT NULL,
    day           DATE NOT NULL,
    PRIMARY KEY (customer_id, draw_id)
);

-- Progress of challenges (per period) and streaks (one row, period_start
-- 1970-01-01), as JSON state.
CREATE TABLE loyalty_progress (
    customer_id   TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    rule_id       TEXT NOT NULL,
    period_start  DATE NOT NULL,
    state         TEXT NOT NULL,
    PRIMARY KEY (customer_id, member_id, rule_id, period_start)
);

-- Badges won (once each).
CREATE TABLE loyalty_badges (
    customer_id   TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    badge         TEXT NOT NULL,
    rule_id       TEXT NOT NULL,
    day           DATE NOT NULL,
    PRIMARY KEY (customer_id, member_id, badge)
);

-- Answers to debit requests by Idempotency-Key, written in the debit's own
-- transaction: a retry gets the first answer and debits nothing.
CREATE TABLE loyalty_idempotency (
    customer_id   TEXT NOT NULL,
    scope         TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        INTEGER NOT NULL,
    response      TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (customer_id, scope, idem_key)
);
CREATE INDEX loyalty_idempotency_by_age ON loyalty_idempotency (created_at);
