//! Back-office users: created from the command line with a generated
//! password (stored as an argon2id hash), signed in through `/app/login`.

use chrono::Utc;
use relais_domain::{Identifier, IdentifierKind, Role, UserId};

use crate::store::web::User;
use crate::store::{Store, StoreError};

/// Why a user could not be created.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The e-mail is not an e-mail address.
    #[error("`{0}` is not an e-mail address")]
    Email(String),
    /// Hashing failed.
    #[error("the password could not be hashed: {0}")]
    Hash(String),
    /// Storage failed, or the e-mail is taken (`Conflict`).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Create a user with a generated password: the user and the password (shown
/// once, never stored). The creation is audited.
pub fn create(store: &Store, actor: &str, email: &str, role: Role) -> Result<(User, String), UsersError> {
    let email = match Identifier::new(IdentifierKind::Email, email) {
        Ok(identifier) => identifier.value().to_string(),
        Err(_) => return Err(UsersError::Email(email.to_string())),
    };
    let password = crate::web::session::generate_password();
    let hash = crate::web::session::hash_password(&password).map_err(UsersError::Hash)?;
    let user = User { id: UserId::new(), email, role, created_at: Utc::now() };
    store.audit(crate::privacy::audit::AuditEntry {
        actor: actor.to_string(),
        action: "users.create".into(),
        subject: None,
        detail: serde_json::json!({ "user_id": user.id, "role": role }),
    })?;
    store.blocking().user_create(&user, &hash)?;
    Ok((user, password))
}
