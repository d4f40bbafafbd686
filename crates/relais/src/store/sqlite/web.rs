//! Users, browser sessions and sign-in codes on SQLite. Writes run on the
//! writer thread.

use chrono::{DateTime, Utc};
use relais_domain::{CustomerId, Role};
use rusqlite::{params, OptionalExtension};

use super::{from_micros, micros, parse_id, SqliteEngine};
use crate::store::web::{CodeKind, SessionSubject, SignInCode, User, WebSession, MAX_CODE_ATTEMPTS};
use crate::store::StoreError;

fn user_row(row: &rusqlite::Row<'_>) -> Result<(User, String), StoreError> {
    let role: String = row.get(2)?;
    let user = User {
        id: parse_id(&row.get::<_, String>(0)?)?,
        email: row.get(1)?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Database(format!("unknown role `{role}`")))?,
        created_at: from_micros(row.get(4)?),
    };
    Ok((user, row.get(3)?))
}

const USER_COLUMNS: &str = "user_id, email, role, password_hash, created_at";

impl SqliteEngine {
    pub(super) fn create_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError> {
        let (user, password_hash) = (user.clone(), password_hash.to_string());
        self.write(false, move |conn| {
            let inserted = conn.execute(
                "INSERT INTO users (user_id, email, role, password_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (email) DO NOTHING",
                params![user.id.to_string(), user.email, user.role.as_str(), password_hash, micros(user.created_at)],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("a user with e-mail `{}` already exists", user.email)));
            }
            Ok(())
        })
    }

    pub(super) fn find_user(&self, column: &str, value: &str) -> Result<Option<(User, String)>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE {column} = ?1 AND disabled_at IS NULL");
        self.readers.with(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query([value])?;
            rows.next()?.map(user_row).transpose()
        })
    }

    pub(super) fn put_session(&self, token_hash: &str, session: &WebSession) -> Result<(), StoreError> {
        let (token_hash, session) = (token_hash.to_string(), session.clone());
        self.write(false, move |conn| {
            conn.execute(
                "INSERT INTO web_sessions (token_hash, kind, subject, csrf, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    token_hash,
                    session.subject.kind(),
                    session.subject.subject(),
                    session.csrf,
                    micros(Utc::now()),
                    micros(session.expires_at)
                ],
            )?;
            Ok(())
        })
    }

    pub(super) fn find_session(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<WebSession>, StoreError> {
        self.readers.with(|conn| {
            let row: Option<(String, String, String, i64)> = conn
                .prepare_cached(
                    "SELECT kind, subject, csrf, expires_at FROM web_sessions WHERE token_hash = ?1 AND expires_at > ?2",
                )?
                .query_row(params![token_hash, micros(now)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            Ok(row.and_then(|(kind, subject, csrf, expires_at)| {
                Some(WebSession {
                    subject: SessionSubject::parse(&kind, &subject)?,
                    csrf,
                    expires_at: from_micros(expires_at),
                })
            }))
        })
    }

    pub(super) fn delete_session(&self, token_hash: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let token_hash = token_hash.to_string();
        self.write(false, move |conn| {
            conn.execute(
                "DELETE FROM web_sessions WHERE token_hash = ?1 OR expires_at <= ?2",
                params![token_hash, micros(now)],
            )?;
            Ok(())
        })
    }

    pub(super) fn put_sign_in_code(&self, code: &SignInCode) -> Result<(), StoreError> {
        let code = code.clone();
        self.write(false, move |conn| {
            conn.execute(
                "INSERT INTO sign_in_codes (code_hash, customer_id, kind, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (code_hash) DO UPDATE SET \
                 expires_at = excluded.expires_at, attempts = 0, used_at = NULL",
                params![
                    code.code_hash,
                    code.customer.to_string(),
                    code.kind.as_str(),
                    micros(Utc::now()),
                    micros(code.expires_at)
                ],
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
        let code_hash = code_hash.to_string();
        let customer = customer.map(|c| c.to_string());
        self.write(false, move |conn| {
            let tx = conn.transaction()?;
            let used: Option<String> = tx
                .query_row(
                    "UPDATE sign_in_codes SET used_at = ?1 WHERE code_hash = ?2 AND kind = ?3 \
                     AND used_at IS NULL AND expires_at > ?1 AND attempts < ?4 \
                     AND (?5 IS NULL OR customer_id = ?5) RETURNING customer_id",
                    params![micros(now), code_hash, kind.as_str(), MAX_CODE_ATTEMPTS, customer],
                    |r| r.get(0),
                )
                .optional()?;
            if used.is_none() {
                if let Some(customer) = &customer {
                    tx.execute(
                        "UPDATE sign_in_codes SET attempts = attempts + 1 WHERE customer_id = ?1 AND kind = ?2 \
                         AND used_at IS NULL",
                        params![customer, kind.as_str()],
                    )?;
                }
            }
            tx.commit()?;
            used.map(|id| parse_id::<CustomerId>(&id)).transpose()
        })
    }
}
