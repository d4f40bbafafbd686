//! Users, browser sessions and sign-in codes on PostgreSQL.

use chrono::{DateTime, Utc};
use relais_domain::{CustomerId, Role};

use super::{parse_id, PgEngine};
use crate::store::web::{CodeKind, SessionSubject, SignInCode, User, WebSession, MAX_CODE_ATTEMPTS};
use crate::store::StoreError;

fn user_row(row: &postgres::Row) -> Result<(User, String), StoreError> {
    let role: &str = row.get(2);
    let user = User {
        id: parse_id(row.get::<_, &str>(0))?,
        email: row.get(1),
        role: Role::parse(role).ok_or_else(|| StoreError::Database(format!("unknown role `{role}`")))?,
        created_at: row.get(4),
    };
    Ok((user, row.get(3)))
}

const USER_COLUMNS: &str = "user_id, email, role, password_hash, created_at";

impl PgEngine {
    pub(super) fn create_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError> {
        self.pool.with(|client| {
            let inserted = client.execute(
                "INSERT INTO users (user_id, email, role, password_hash, created_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (email) DO NOTHING",
                &[&user.id.to_string(), &user.email, &user.role.as_str(), &password_hash, &user.created_at],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("a user with e-mail `{}` already exists", user.email)));
            }
            Ok(())
        })
    }

    pub(super) fn find_user(&self, column: &str, value: &str) -> Result<Option<(User, String)>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE {column} = $1 AND disabled_at IS NULL");
        self.pool.with(|client| client.query_opt(&sql, &[&value])?.map(|row| user_row(&row)).transpose())
    }

    pub(super) fn put_session(&self, token_hash: &str, session: &WebSession) -> Result<(), StoreError> {
        self.pool.with(|client| {
            client.execute(
                "INSERT INTO web_sessions (token_hash, kind, subject, csrf, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, now(), $5)",
                &[&token_hash, &session.subject.kind(), &session.subject.subject(), &session.csrf, &session.expires_at],
            )?;
            Ok(())
        })
    }

    pub(super) fn find_session(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<WebSession>, StoreError> {
        self.pool.with(|client| {
            let row = client.query_opt(
                "SELECT kind, subject, csrf, expires_at FROM web_sessions WHERE token_hash = $1 AND expires_at > $2",
                &[&token_hash, &now],
            )?;
            Ok(row.and_then(|r| {
                Some(WebSession {
                    subject: SessionSubject::parse(r.get(0), r.get(1))?,
                    csrf: r.get(2),
                    expires_at: r.get(3),
                })
            }))
        })
    }

    pub(super) fn delete_session(&self, token_hash: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.pool.with(|client| {
            client
                .execute("DELETE FROM web_sessions WHERE token_hash = $1 OR expires_at <= $2", &[&token_hash, &now])?;
            Ok(())
        })
    }

    pub(super) fn put_sign_in_code(&self, code: &SignInCode) -> Result<(), StoreError> {
        self.pool.with(|client| {
            client.execute(
                "INSERT INTO sign_in_codes (code_hash, customer_id, kind, created_at, expires_at) \
                 VALUES ($1, $2, $3, now(), $4) ON CONFLICT (code_hash) DO UPDATE SET \
                 expires_at = excluded.expires_at, attempts = 0, used_at = NULL",
                &[&code.code_hash, &code.customer.to_string(), &code.kind.as_str(), &code.expires_at],
            )?;
            Ok(())
        })
    }

    pub(super) fn use_sign_in_code(
        &self,
        kind: CodeKind,
        customer: Option<CustomerId>,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<CustomerId>, StoreError> {
        let customer = customer.map(|c| c.to_string());
        let max_attempts = MAX_CODE_ATTEMPTS as i32;
        self.pool.with(|client| {
            let mut tx = client.transaction()?;
            // The row lock of the UPDATE makes a code usable once, whichever
            // server two requests reach.
            let used = tx.query_opt(
                "UPDATE sign_in_codes SET used_at = $1 WHERE code_hash = $2 AND kind = $3 \
                 AND used_at IS NULL AND expires_at > $1 AND attempts < $4 \
                 AND ($5::text IS NULL OR customer_id = $5) RETURNING customer_id",
                &[&now, &code_hash, &kind.as_str(), &max_attempts, &customer],
            )?;
            if used.is_none() {
                if let Some(customer) = &customer {
                    tx.execute(
                        "UPDATE sign_in_codes SET attempts = attempts + 1 WHERE customer_id = $1 AND kind = $2 \
                         AND used_at IS NULL",
                        &[customer, &kind.as_str()],
                    )?;
                }
            }
            tx.commit()?;
            used.map(|row| parse_id::<CustomerId>(row.get::<_, &str>(0))).transpose()
        })
    }
}
