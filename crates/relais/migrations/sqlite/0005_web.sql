-- Pages (issue 8): back-office users, browser sessions and the portal's
-- one-time sign-in codes.

-- People who sign in to the back office. The e-mail is the staff member's
-- login, not a customer's data; the password is an argon2id PHC string.
CREATE TABLE users (
    user_id       TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    disabled_at   INTEGER
);

-- Browser sessions, by the SHA-256 of the cookie's secret: `staff` sessions
-- name a user, `member` sessions (the portal) a customer.
CREATE TABLE web_sessions (
    token_hash    TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    subject       TEXT NOT NULL,
    csrf          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
CREATE INDEX web_sessions_by_subject ON web_sessions (subject);

-- One-time sign-in codes of the portal (a code e-mailed to the member, or a
-- link handed by staff), by keyed hash; used once, counted attempts.
CREATE TABLE sign_in_codes (
    code_hash     TEXT PRIMARY KEY,
    customer_id   TEXT NOT NULL,
    kind          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    used_at       INTEGER
);
CREATE INDEX sign_in_codes_by_customer ON sign_in_codes (customer_id);

-- The customer room reads the survey answers of a period: a partial index
-- holds only those events, so ingest pays for it on survey answers alone.
CREATE INDEX events_survey_answers ON events (ts) WHERE name = 'Survey Answered';
