//! Integration tests: the real server on port 0 against a real database (SQLite
//! by default, PostgreSQL when RELAIS_TEST_DATABASE_URL is set). One binary, so
//! the workspace links once.

mod helpers;

// The Segment tracking API: validation, idempotency, limits, authentication.
mod tracking;
// Identity resolution: merges, conflicts, lookups, redirects.
mod identity;
// Computed traits: incremental values, rebuild, timeline paging.
mod traits;
// The outbox and its delivery worker: file transport, SMTP, retries.
mod outbox;
// Durability, crash recovery, concurrent servers, OpenAPI and metrics.
mod operations;
// Encryption at rest, masks by role, payment cards, master keys.
mod privacy;
// Every route × every role against the access matrix fixture.
mod access;
// The audit log: records, verification, failures.
mod audit;
// Consents: proof, dates, check API, double opt-in, unsubscribe.
mod consents;
// Loyalty: programmes, earning, statements, debits, merges, erasure, expiry.
mod loyalty;
// Customer lifetime value: the CDNOW figures from the command line, the API on live orders.
mod analytics;
// Segments: the language's errors, live memberships, refresh, exports, RFM as traits.
mod segments;
// Journeys: the founding example's what-ifs, attribution, models from journey files, the API and its SVG.
mod journeys;
// The back office: sign-in, sessions, CSRF, roles, escaping, both languages.
mod pages;
// The customers' portal: code and link sign-in, card, statement, redemptions, receipts, data, CSRF.
mod portal;
// Loyalty gaps: segment-targeted coupons, tier e-mails, reservations released after their hold.
mod loyalty_gaps;
