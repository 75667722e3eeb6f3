//! Identifiers, document kinds and roles shared by every layer.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The id of one document: a UUIDv7 minted offline by the device that creates the document.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocId(pub Uuid);

impl DocId {
    /// A new, time-ordered id (UUIDv7) from the system clock and randomness, for callers;
    /// code in this crate mints ids from the [`crate::env::Env`] it is given.
    #[allow(clippy::disallowed_methods)]
    pub fn new() -> Self {
        (&crate::env::SystemEnv as &dyn crate::env::Env).doc_id()
    }

    /// The 16 raw bytes of the id (the form stored in SQLite).
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Builds an id from 16 raw bytes; `None` for any other length.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Uuid::from_slice(b).ok().map(Self)
    }
}

impl Default for DocId {
    #[allow(clippy::disallowed_methods)]
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({self})")
    }
}

impl FromStr for DocId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Declares the id of one kind of document: a [`DocId`] that says, in its type, which kind it
/// names, so that passing a customer's id where a quote's is wanted fails to compile. The
/// conversion from a bare [`DocId`] claims the kind; reading the document checks it.
macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub DocId);

        impl $name {
            /// The kind of document this id names.
            pub const KIND: DocKind = $kind;

            /// The id without its kind.
            pub fn doc_id(self) -> DocId {
                self.0
            }

            /// The 16 raw bytes of the id (the form stored in SQLite).
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl From<DocId> for $name {
            fn from(id: DocId) -> Self {
                Self(id)
            }
        }

        impl From<$name> for DocId {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                DocId::from_str(s).map(Self)
            }
        }

        impl PartialEq<DocId> for $name {
            fn eq(&self, other: &DocId) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for DocId {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

typed_id!(
    /// The id of a customer document.
    ///
    /// A customer's id is not a quote's: this does not compile.
    ///
    /// ```compile_fail
    /// use fieldsync_core::{CustomerId, DocId, QuoteId};
    /// fn quote(_: QuoteId) {}
    /// quote(CustomerId(DocId::new()));
    /// ```
    CustomerId,
    DocKind::Customer
);
typed_id!(
    /// The id of a visit document.
    VisitId,
    DocKind::Visit
);
typed_id!(
    /// The id of a quote document.
    QuoteId,
    DocKind::Quote
);

/// The three kinds of replicated documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocKind {
    /// A customer (account) with contacts, addresses and equipment.
    Customer,
    /// A visit to a customer: a sales call, return visit or service visit.
    Visit,
    /// A quote to a customer, with line items and approvals.
    Quote,
}

impl DocKind {
    /// The stable lower-case name stored in documents and projections.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Visit => "visit",
            Self::Quote => "quote",
        }
    }

    /// Parses the name written by [`DocKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "customer" => Some(Self::Customer),
            "visit" => Some(Self::Visit),
            "quote" => Some(Self::Quote),
            _ => None,
        }
    }

    /// The small integer stored in SQLite columns.
    pub fn code(self) -> i64 {
        match self {
            Self::Customer => 1,
            Self::Visit => 2,
            Self::Quote => 3,
        }
    }

    /// Inverse of [`DocKind::code`].
    pub fn from_code(c: i64) -> Option<Self> {
        match c {
            1 => Some(Self::Customer),
            2 => Some(Self::Visit),
            3 => Some(Self::Quote),
            _ => None,
        }
    }
}

impl fmt::Display for DocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role of the person (device) writing a change. Role-owned fields and approvals
/// check it locally; the relay enforces it again for every uploaded change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A field rep: edits customers, visits and quotes in their scopes; proposes terms.
    Rep,
    /// A sales manager: everything a rep does, plus approvals, owner and scope changes.
    Manager,
    /// A sales director: everything a manager does, plus credit limits and payment terms.
    Director,
    /// An administrator (IT or the central system): everything, including grades.
    Admin,
}

impl Role {
    /// The stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rep => "rep",
            Self::Manager => "manager",
            Self::Director => "director",
            Self::Admin => "admin",
        }
    }

    /// Parses the name written by [`Role::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rep" => Some(Self::Rep),
            "manager" => Some(Self::Manager),
            "director" => Some(Self::Director),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// Whether this role may write the given role-owned field.
    pub fn may_write(self, field: GovernedField) -> bool {
        self >= field.min_role()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fields whose value takes effect only when written by a role allowed to set them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GovernedField {
    /// A customer's approved credit limit (director).
    CreditLimit,
    /// A customer's approved payment terms (director).
    PaymentTerms,
    /// A customer's grade, computed centrally (admin).
    Grade,
    /// The owner rep of a customer or quote (manager).
    Owner,
    /// The scope (territory) of a document (manager).
    Scope,
    /// Approving or rejecting a quote (manager).
    QuoteApproval,
    /// Moving a customer's lifecycle stage back, or to churned (manager).
    StageBack,
    /// A role-owned field this version does not know (admin).
    Unlisted,
}

impl GovernedField {
    /// The lowest role allowed to write the field, from the authority table
    /// ([`crate::model::authority::RULES`]).
    pub fn min_role(self) -> Role {
        crate::model::authority::min_role(self)
    }

    /// The name of the field (the key under which it is stored in the document's `governed`
    /// map, where it has one).
    pub fn key(self) -> &'static str {
        match self {
            Self::CreditLimit => "credit_limit",
            Self::PaymentTerms => "payment_terms",
            Self::Grade => "grade",
            Self::Owner => "owner",
            Self::Scope => "scope",
            Self::QuoteApproval => "approval",
            Self::StageBack => "stage",
            Self::Unlisted => "governed record",
        }
    }
}

/// The scope that stands for every scope: a device granted it sees every document, and a log
/// or snapshot read of it covers them all.
pub const ALL_SCOPES: &str = "*";

/// Milliseconds since the Unix epoch, as captured on the device (event time, not merge order).
pub type Millis = i64;

/// The current wall-clock time in milliseconds, for callers; code in this crate takes the time
/// from the [`crate::env::Env`] or the edit context it is given.
pub fn now_millis() -> Millis {
    crate::env::Env::now_millis(&crate::env::SystemEnv)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests mint ids freely
mod tests {
    use super::*;

    #[test]
    fn doc_id_round_trips_through_text_and_bytes() {
        let id = DocId::new();
        assert_eq!(id.to_string().parse::<DocId>().unwrap(), id);
        assert_eq!(DocId::from_slice(id.as_bytes()), Some(id));
        assert_eq!(DocId::from_slice(&[1, 2, 3]), None);
        assert_eq!(id.0.get_version_num(), 7);
    }

    #[test]
    fn roles_are_ordered_by_authority() {
        assert!(Role::Director.may_write(GovernedField::CreditLimit));
        assert!(!Role::Manager.may_write(GovernedField::CreditLimit));
        assert!(Role::Manager.may_write(GovernedField::Owner));
        assert!(!Role::Rep.may_write(GovernedField::Scope));
        assert!(!Role::Director.may_write(GovernedField::Grade));
        assert!(Role::Admin.may_write(GovernedField::Grade));
        for k in [DocKind::Customer, DocKind::Visit, DocKind::Quote] {
            assert_eq!(DocKind::parse(k.as_str()), Some(k));
            assert_eq!(DocKind::from_code(k.code()), Some(k));
        }
    }
}
