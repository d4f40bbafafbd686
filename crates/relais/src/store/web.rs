//! What the pages store: back-office users, browser sessions and the
//! portal's one-time sign-in codes. Engines hold the SQL (`sqlite/web.rs`,
//! `postgres/web.rs`); secrets are stored only as hashes.

use chrono::{DateTime, Utc};
use relais_domain::{CustomerId, Role, UserId};

/// A person who signs in to the back office.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user's id.
    pub id: UserId,
    /// Their login (lower case).
    pub email: String,
    /// What they may do: the roles of API keys.
    pub role: Role,
    /// When the user was created.
    pub created_at: DateTime<Utc>,
}

/// Who a browser session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionSubject {
    /// A back-office user.
    Staff(UserId),
    /// A customer signed in to the portal.
    Member(CustomerId),
}

impl SessionSubject {
    /// `staff` or `member`, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            SessionSubject::Staff(_) => "staff",
            SessionSubject::Member(_) => "member",
        }
    }

    /// The user's or customer's id, as stored.
    pub fn subject(&self) -> String {
        match self {
            SessionSubject::Staff(id) => id.to_string(),
            SessionSubject::Member(id) => id.to_string(),
        }
    }

    /// Read back a stored (kind, subject) pair.
    pub fn parse(kind: &str, subject: &str) -> Option<SessionSubject> {
        match kind {
            "staff" => subject.parse().ok().map(SessionSubject::Staff),
            "member" => subject.parse().ok().map(SessionSubject::Member),
            _ => None,
        }
    }
}

/// A browser session as stored (its secret is only in the cookie).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    /// Whose session it is.
    pub subject: SessionSubject,
    /// The token every form of the session must carry (CSRF protection).
    pub csrf: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// How a portal sign-in code reaches the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    /// Six digits e-mailed to the member, typed with their e-mail or card number.
    Typed,
    /// A long token in a link handed over by staff.
    Link,
}

impl CodeKind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeKind::Typed => "code",
            CodeKind::Link => "link",
        }
    }
}

/// A one-time sign-in code to store (by its keyed hash).
#[derive(Debug, Clone)]
pub struct SignInCode {
    /// The keyed hash of the code.
    pub code_hash: String,
    /// Who it signs in.
    pub customer: CustomerId,
    /// How it was handed over.
    pub kind: CodeKind,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// Wrong codes a member may type before their pending codes stop working.
pub const MAX_CODE_ATTEMPTS: i64 = 5;
