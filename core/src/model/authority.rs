//! Who may change what, judged on the effect of a change.
//!
//! [`RULES`] is the one table of authority: which role may change which role-owned part of a
//! document. The typed edits check it before they write ([`super::EditCtx`]), the client checks
//! it again on the document an edit produces before it commits, and the relay checks it on
//! every uploaded change, whatever Automerge path the change took: each side reads the
//! document's [`Governed`] state before and after the change and compares them
//! ([`judge`]). A client that writes Automerge directly therefore gets no more than the typed
//! API allows.
//!
//! The governed state is read from the document itself, not from the typed model alone:
//! every concurrent value of a role-owned key counts (a value hidden on the losing side of a
//! conflict is still a change), nested objects are rendered whole, and the root containers
//! are identified by their object ids (deleting a container and making a new one under the
//! same key would drop every concurrent addition to the old one, so no change may do it).
//!
//! Enumerated values (lifecycle stage, visit kind, quote status marks) are checked against
//! their defined sets: a change may not introduce a value this build does not know. Values
//! already in a document (written under a newer schema and accepted by a newer relay) are
//! kept and shown as they are; a change that leaves them alone is judged as usual.

use automerge::{ObjId, ObjType, ROOT, ReadDoc, Value};

use super::{Document, ModelError, am};
use crate::attachment::entry::Entries;
use crate::ids::{DocKind, GovernedField, Role};

/// One line of the authority table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The role-owned part of a document.
    pub field: GovernedField,
    /// The lowest role that may change it.
    pub min_role: Role,
    /// What it is, for people.
    pub what: &'static str,
}

/// The table of authority. [`GovernedField::min_role`] reads it; so do the typed edits, the
/// client's check before a local edit commits, and the relay's check of every upload.
pub const RULES: &[Rule] = &[
    Rule {
        field: GovernedField::CreditLimit,
        min_role: Role::Director,
        what: "a customer's approved credit limit",
    },
    Rule {
        field: GovernedField::PaymentTerms,
        min_role: Role::Director,
        what: "a customer's approved payment terms",
    },
    Rule {
        field: GovernedField::Grade,
        min_role: Role::Admin,
        what: "a customer's grade (computed centrally)",
    },
    Rule {
        field: GovernedField::Owner,
        min_role: Role::Manager,
        what: "the owner rep of a customer or quote",
    },
    Rule {
        field: GovernedField::Scope,
        min_role: Role::Manager,
        what: "the territory a document belongs to",
    },
    Rule {
        field: GovernedField::QuoteApproval,
        min_role: Role::Manager,
        what: "approving or rejecting a quote revision",
    },
    Rule {
        field: GovernedField::StageBack,
        min_role: Role::Manager,
        what: "moving a customer's lifecycle stage back, or to churned",
    },
    Rule {
        field: GovernedField::Unlisted,
        min_role: Role::Admin,
        what: "a role-owned field this version does not know",
    },
];

/// The lowest role that may change `field` (from [`RULES`]).
pub(crate) fn min_role(field: GovernedField) -> Role {
    RULES
        .iter()
        .find(|r| r.field == field)
        .map_or(Role::Admin, |r| r.min_role)
}

/// A customer's lifecycle stages in their forward order.
pub const STAGES: [&str; 6] = [
    "to_identify",
    "potential",
    "opportunity",
    "order_customer",
    "user",
    "churned",
];

/// The kinds of visit.
pub const VISIT_KINDS: [&str; 7] = [
    "sales_call",
    "return_visit",
    "quote_follow_up",
    "service_repair",
    "complaint_intake",
    "care",
    "other",
];

/// The role a move of the lifecycle stage from `from` to `to` needs: forward moves are any
/// role's (a rep advances a customer after a visit); moving back (re-nurturing) or to
/// `churned` is a manager's decision.
pub fn stage_move_role(from: &str, to: &str) -> Role {
    let rank = |s: &str| STAGES.iter().position(|x| *x == s);
    match (rank(from), rank(to)) {
        _ if from == to => Role::Rep,
        (_, Some(5)) => min_role(GovernedField::StageBack),
        (Some(f), Some(t)) if t > f => Role::Rep,
        _ => min_role(GovernedField::StageBack),
    }
}

/// Checks a lifecycle stage written by a typed edit.
pub(crate) fn check_stage(stage: &str) -> Result<(), ModelError> {
    if STAGES.contains(&stage) {
        Ok(())
    } else {
        Err(ModelError::Invalid(format!(
            "unknown lifecycle stage `{stage}` (one of {})",
            STAGES.join(", ")
        )))
    }
}

/// Checks a visit kind written by a typed edit.
pub(crate) fn check_visit_kind(kind: &str) -> Result<(), ModelError> {
    if VISIT_KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(ModelError::Invalid(format!(
            "unknown visit kind `{kind}` (one of {})",
            VISIT_KINDS.join(", ")
        )))
    }
}

/// The role-owned state of one document, as [`judge`] compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Governed {
    kind: DocKind,
    /// Each governed part and its rendering (every concurrent value included).
    parts: Vec<(GovernedField, String)>,
    /// Claims of authority recorded in the document (approvals, the governed log): entry id
    /// → (rendering, the highest role it names).
    claims: Vec<(String, String, Role)>,
    /// The lifecycle stage shown, and every concurrent value of it.
    stage: Option<(String, Vec<String>)>,
    /// Enumerated values outside their defined sets: `(what, value)`.
    unknown: Vec<(&'static str, String)>,
    /// Quote status marks that claim a decision (approvals are records, never marks).
    decision_marks: Vec<String>,
    /// The root containers: key and object id.
    layout: Vec<(String, String)>,
    /// The attachment entries.
    entries: Entries,
}

/// Root keys of role-owned scalars and what they are.
const ROOT_GOVERNED: &[(&str, GovernedField)] = &[("scope", GovernedField::Scope)];

/// Keys of the `governed` map and the field each belongs to.
const GOVERNED_KEYS: &[(&str, GovernedField)] = &[
    ("credit_limit_minor", GovernedField::CreditLimit),
    ("credit_limit_currency", GovernedField::CreditLimit),
    ("payment_terms", GovernedField::PaymentTerms),
    ("grade", GovernedField::Grade),
    ("owner", GovernedField::Owner),
];

/// Deepest level [`render`] descends to (documents are checked for nesting before this runs;
/// this only keeps the rendering finite on any input).
const RENDER_DEPTH: usize = 16;

/// A canonical rendering of every concurrent value at `key` of `obj`: scalars as JSON,
/// objects with their id and contents.
fn render<R: ReadDoc>(doc: &R, obj: &ObjId, key: &str, depth: usize) -> String {
    let Ok(values) = doc.get_all(obj, key) else {
        return String::new();
    };
    let mut out: Vec<String> = values
        .iter()
        .map(|(v, id)| match v {
            Value::Scalar(s) => am::scalar_json(s).to_string(),
            Value::Object(t) => render_obj(doc, id, *t, depth),
        })
        .collect();
    out.sort();
    out.join("|")
}

fn render_obj<R: ReadDoc>(doc: &R, id: &ObjId, t: ObjType, depth: usize) -> String {
    if depth >= RENDER_DEPTH {
        return format!("<{t:?} {id}>");
    }
    let inner: Vec<String> = match t {
        ObjType::Map | ObjType::Table => doc
            .keys(id)
            .map(|k| format!("{k}={}", render(doc, id, &k, depth + 1)))
            .collect(),
        ObjType::List | ObjType::Text => (0..doc.length(id))
            .map(|i| match doc.get_all(id, i) {
                Ok(vs) => vs
                    .iter()
                    .map(|(v, cid)| match v {
                        Value::Scalar(s) => am::scalar_json(s).to_string(),
                        Value::Object(ct) => render_obj(doc, cid, *ct, depth + 1),
                    })
                    .collect::<Vec<_>>()
                    .join("|"),
                Err(_) => String::new(),
            })
            .collect(),
    };
    format!("<{t:?} {id} {}>", inner.join(","))
}

/// Every concurrent string value at a root key.
fn all_strings<R: ReadDoc>(doc: &R, key: &str) -> Vec<String> {
    let mut v: Vec<String> = doc
        .get_all(ROOT, key)
        .unwrap_or_default()
        .into_iter()
        .map(|(v, _)| match v {
            Value::Scalar(s) => match s.as_ref() {
                automerge::ScalarValue::Str(s) => s.to_string(),
                other => am::scalar_json(other).to_string(),
            },
            Value::Object(t) => format!("<{t:?}>"),
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The highest role named by the `role` key of a record (every concurrent value), or Admin
/// when a value is not a role at all.
fn claimed_role<R: ReadDoc>(doc: &R, record: &ObjId) -> Role {
    let values = doc.get_all(record, "role").unwrap_or_default();
    values
        .into_iter()
        .map(|(v, _)| match v {
            Value::Scalar(s) => match s.as_ref() {
                automerge::ScalarValue::Str(s) => Role::parse(s).unwrap_or(Role::Admin),
                _ => Role::Admin,
            },
            Value::Object(_) => Role::Admin,
        })
        .max()
        .unwrap_or(Role::Rep)
}

/// The records of an id-keyed map of claims (approvals, the governed log).
fn claims<R: ReadDoc>(doc: &R, container: &str, out: &mut Vec<(String, String, Role)>) {
    let Some(map) = am::get_map(doc, &ROOT, container) else {
        return;
    };
    for key in doc.keys(&map) {
        let rendering = render(doc, &map, &key, 0);
        let role = doc
            .get_all(&map, key.as_str())
            .unwrap_or_default()
            .into_iter()
            .map(|(v, id)| match v {
                Value::Object(ObjType::Map) => claimed_role(doc, &id),
                _ => Role::Admin,
            })
            .max()
            .unwrap_or(Role::Admin);
        out.push((format!("{container}/{key}"), rendering, role));
    }
}

impl Governed {
    /// Reads the governed state of a document (`typed` is the same document, read).
    pub fn of<R: ReadDoc>(doc: &R, typed: &Document) -> Self {
        let kind = typed.header().kind;
        let mut parts = Vec::new();
        for (key, field) in ROOT_GOVERNED {
            parts.push((*field, render(doc, &ROOT, key, 0)));
        }
        if let Some(g) = am::get_map(doc, &ROOT, "governed") {
            for key in doc.keys(&g) {
                let field = GOVERNED_KEYS
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map_or(GovernedField::Unlisted, |(_, f)| *f);
                parts.push((field, format!("{key}:{}", render(doc, &g, &key, 0))));
            }
        }
        // Approvals first: a forged decision is reported as one, not by its log entry.
        let mut claims_out = Vec::new();
        if kind == DocKind::Quote {
            claims(doc, "approvals", &mut claims_out);
        }
        claims(doc, "governed_log", &mut claims_out);
        let mut unknown = Vec::new();
        let mut decision_marks = Vec::new();
        let stage = match typed {
            Document::Customer(c) => {
                let all = all_strings(doc, "stage");
                for s in &all {
                    if !STAGES.contains(&s.as_str()) {
                        unknown.push(("lifecycle stage", s.clone()));
                    }
                }
                Some((c.stage.clone(), all))
            }
            Document::Visit(_) => {
                for k in all_strings(doc, "visit_kind") {
                    if !VISIT_KINDS.contains(&k.as_str()) {
                        unknown.push(("visit kind", k));
                    }
                }
                for m in marks(doc) {
                    if super::VisitStatus::parse(&m).is_none() {
                        unknown.push(("visit status", m));
                    }
                }
                None
            }
            Document::Quote(_) => {
                for m in marks(doc) {
                    if !super::quote::is_valid_mark(&m) {
                        let status = m.split('@').next().unwrap_or_default();
                        if ["approved", "rejected"].contains(&status) {
                            decision_marks.push(m.clone());
                        }
                        unknown.push(("quote status mark", m));
                    }
                }
                None
            }
        };
        // Every concurrent container at a root key: a container two writers created at once
        // (the attachments map, which older documents lack) is kept whole on both sides.
        let mut layout: Vec<(String, String)> = doc
            .keys(ROOT)
            .flat_map(|key| {
                doc.get_all(ROOT, key.as_str())
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(move |(v, id)| match v {
                        Value::Object(_) => Some((key.clone(), id.to_string())),
                        Value::Scalar(_) => None,
                    })
            })
            .collect();
        layout.sort();
        Self {
            kind,
            parts,
            claims: claims_out,
            stage,
            unknown,
            decision_marks,
            layout,
            entries: Entries::of(doc),
        }
    }
}

/// The keys of the `status_marks` map.
fn marks<R: ReadDoc>(doc: &R) -> Vec<String> {
    am::get_map(doc, &ROOT, "status_marks")
        .map(|m| am::keys(doc, &m))
        .unwrap_or_default()
}

/// Why a change was refused by [`judge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The author's role may not change a governed part.
    Forbidden {
        /// The role that made the change.
        role: Role,
        /// What it changed.
        field: GovernedField,
        /// The lowest role that may.
        needed: Role,
        /// Details for people (e.g. the stage move).
        detail: String,
    },
    /// The change writes a value outside its defined set.
    Unknown {
        /// What kind of value.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// The change deletes or replaces a container the document was made with.
    Layout(String),
    /// The change writes a malformed attachment entry or alters an existing one.
    Attachment(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Forbidden {
                role,
                field,
                needed,
                detail,
            } => {
                write!(f, "role {role} may not change {}", field.key())?;
                if !detail.is_empty() {
                    write!(f, " ({detail})")?;
                }
                write!(f, "; needs {needed}")
            }
            Self::Unknown { what, value } => write!(
                f,
                "unknown {what} `{value}` (this version knows schema {})",
                super::SCHEMA_VERSION
            ),
            Self::Layout(key) => write!(
                f,
                "change deletes or replaces the document's `{key}` container"
            ),
            Self::Attachment(why) => f.write_str(why),
        }
    }
}

impl From<Verdict> for ModelError {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Forbidden {
                role,
                field,
                needed,
                ..
            } => Self::Forbidden {
                role,
                field,
                needed,
            },
            other => Self::Invalid(other.to_string()),
        }
    }
}

/// Judges a change by its effect: `before` is the document's governed state before it
/// (`None` for a new document), `after` the state it produces, `role` the authority of the
/// device that made (or uploads) it.
///
/// A new document may be created with its scope and stage by any role; every other governed
/// part it sets needs the part's role. On an existing document, any governed part that
/// differs needs its role, approvals and log entries may not claim more than the author's
/// role, a stage move needs the role [`stage_move_role`] names, no value outside its defined
/// set may appear, and no root container may be deleted or replaced.
pub fn judge(before: Option<&Governed>, after: &Governed, role: Role) -> Result<(), Verdict> {
    let forbid = |field: GovernedField, needed: Role, detail: String| {
        if role >= needed {
            Ok(())
        } else {
            Err(Verdict::Forbidden {
                role,
                field,
                needed,
                detail,
            })
        }
    };
    // A status mark claiming a decision is an approval attempt by whoever lacks the role (and
    // an invalid mark for whoever has it: decisions are approval records).
    for m in &after.decision_marks {
        if !before.is_some_and(|b| b.decision_marks.contains(m)) {
            forbid(
                GovernedField::QuoteApproval,
                GovernedField::QuoteApproval.min_role(),
                format!("status mark `{m}`"),
            )?;
        }
    }
    // Values outside their sets: only new ones count (a newer schema's value stays).
    for (what, value) in &after.unknown {
        if !before.is_some_and(|b| b.unknown.iter().any(|(w, v)| w == what && v == value)) {
            return Err(Verdict::Unknown {
                what,
                value: value.clone(),
            });
        }
    }
    // Root containers keep their identity.
    if let Some(b) = before {
        for (key, id) in &b.layout {
            if !after.layout.iter().any(|(k, i)| k == key && i == id) {
                return Err(Verdict::Layout(key.clone()));
            }
        }
    }
    // Attachment entries: well formed when made, their content fixed after.
    if let Some(why) = after.entries.refusal(before.map(|b| &b.entries)) {
        return Err(Verdict::Attachment(why));
    }
    // Governed parts.
    for (field, value) in &after.parts {
        let previous = before.map(|b| {
            b.parts
                .iter()
                .filter(|(f, _)| f == field)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        });
        let changed = match &previous {
            Some(prev) => !prev.contains(&value.as_str()),
            // At creation only the scope (chosen by the creator, checked against its scopes
            // by the relay) may be set without the role; an empty value sets nothing.
            None => *field != GovernedField::Scope && !value.is_empty(),
        };
        if changed {
            forbid(*field, field.min_role(), String::new())?;
        }
    }
    if let Some(b) = before {
        // A governed part that disappeared (a key removed from the governed map).
        for (field, value) in &b.parts {
            if !after.parts.iter().any(|(f, v)| f == field && v == value) {
                forbid(*field, field.min_role(), String::new())?;
            }
        }
    }
    // Claims of authority: new or changed approvals and log entries.
    for (id, rendering, claimed) in &after.claims {
        let same =
            before.is_some_and(|b| b.claims.iter().any(|(i, r, _)| i == id && r == rendering));
        if same {
            continue;
        }
        if id.starts_with("approvals/") {
            forbid(
                GovernedField::QuoteApproval,
                GovernedField::QuoteApproval.min_role(),
                String::new(),
            )?;
        }
        if *claimed > role {
            return Err(Verdict::Forbidden {
                role,
                field: GovernedField::Unlisted,
                needed: *claimed,
                detail: format!("record `{id}` claims role {claimed}"),
            });
        }
    }
    if let Some(b) = before {
        for (id, rendering, _) in &b.claims {
            if !after
                .claims
                .iter()
                .any(|(i, r, _)| i == id && r == rendering)
            {
                let field = if id.starts_with("approvals/") {
                    GovernedField::QuoteApproval
                } else {
                    GovernedField::Unlisted
                };
                forbid(field, field.min_role(), format!("record `{id}` removed"))?;
            }
        }
    }
    // Lifecycle stage moves: every value that is new, from the stage shown before.
    if let (Some((_, after_all)), kind) = (&after.stage, after.kind)
        && kind == DocKind::Customer
    {
        let (from, before_all) = match before.and_then(|b| b.stage.as_ref()) {
            Some((shown, all)) => (shown.as_str(), all.clone()),
            None => ("to_identify", Vec::new()),
        };
        for to in after_all {
            if before_all.contains(to) {
                continue;
            }
            let needed = stage_move_role(from, to);
            forbid(
                GovernedField::StageBack,
                needed,
                format!("stage {from} → {to}"),
            )?;
        }
    }
    Ok(())
}

/// Reads a document's governed state for [`judge`], `None` when it has no readable typed form.
pub fn governed_of<R: ReadDoc>(doc: &R) -> Option<Governed> {
    let typed = super::read_document(doc).ok()?;
    Some(Governed::of(doc, &typed))
}

/// The client's check before a local edit commits: judges what `doc` holds now against the
/// governed state `before` the edit (`None` for a new document) at `role`.
pub fn check_local<R: ReadDoc>(
    before: Option<&Governed>,
    doc: &R,
    role: Role,
) -> Result<(), ModelError> {
    let typed = super::read_document(doc)?;
    judge(before, &Governed::of(doc, &typed), role).map_err(Into::into)
}
