//! The quote document: line items, currency, revisions, a status and approvals.
//!
//! **Revisions.** What a manager approves is the quote's *content*: currency, validity,
//! payment and delivery terms, and the active lines with their prices and discounts. Its
//! [`Quote::digest`] (a hash of that content) names the revision. Every status past draft is
//! bound to the revision it was reached on: `submitted`, `sent`, `won`, `lost`, `expired` and
//! `converted` are add-only marks `<status>@<digest>` in `status_marks`, and an approval
//! records the digest (and a frozen copy) of the content it approved. The status a quote
//! reads is computed from the marks and approvals of its current revision only, walking the
//! chain draft → submitted → approved/rejected → sent → won/lost/expired → converted; a step
//! counts only when the one before it holds. So an edit to the content of a submitted or
//! approved quote, made here or concurrently on another laptop, starts a new draft revision
//! on every replica alike: the approval given to the old content is shown as void, with what
//! changed, and no quote ever reads approved with content other than the approved one.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ROOT, ReadDoc};
use serde::{Deserialize, Serialize};

use super::{
    EditCtx, Header, ModelError, Money, Note, add_note, am, read_notes, read_set, set_archived,
    write_governed,
};
use crate::ids::{CustomerId, GovernedField, Millis};

/// Quote status, a lattice per revision:
/// `draft < submitted < {approved, rejected} < sent < {won, lost, expired} < converted`.
/// Within a revision the status never regresses (marks are add-only); incomparable statuses of
/// the same rank are resolved deterministically (rejected over approved, lost over expired over
/// won) and reported as a [`StatusConflict`]. A change of the quote's content starts a new
/// revision at draft (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuoteStatus {
    /// Being drafted.
    Draft,
    /// Submitted for approval.
    Submitted,
    /// Approved by a manager.
    Approved,
    /// Rejected by a manager.
    Rejected,
    /// Sent to the customer.
    Sent,
    /// Won.
    Won,
    /// Lost.
    Lost,
    /// Expired.
    Expired,
    /// Handed to the ERP as an order.
    Converted,
}

impl QuoteStatus {
    /// All statuses.
    pub const ALL: [Self; 9] = [
        Self::Draft,
        Self::Submitted,
        Self::Approved,
        Self::Rejected,
        Self::Sent,
        Self::Won,
        Self::Lost,
        Self::Expired,
        Self::Converted,
    ];

    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Submitted => "submitted",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Sent => "sent",
            Self::Won => "won",
            Self::Lost => "lost",
            Self::Expired => "expired",
            Self::Converted => "converted",
        }
    }

    /// Parses [`QuoteStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Height in the lattice; statuses of equal rank are incomparable.
    pub fn rank(self) -> u8 {
        match self {
            Self::Draft => 0,
            Self::Submitted => 1,
            Self::Approved | Self::Rejected => 2,
            Self::Sent => 3,
            Self::Won | Self::Lost | Self::Expired => 4,
            Self::Converted => 5,
        }
    }

    /// Tie-break among statuses of equal rank (higher wins): the conservative outcome wins.
    fn precedence(self) -> u8 {
        match self {
            Self::Rejected | Self::Lost => 2,
            Self::Expired => 1,
            _ => 0,
        }
    }

    /// The status a merge of `self` and `other` settles on.
    pub fn join(self, other: Self) -> Self {
        if (other.rank(), other.precedence()) > (self.rank(), self.precedence()) {
            other
        } else {
            self
        }
    }

    /// The statuses a quote may move to from this one by a local edit.
    fn allowed_from(self) -> &'static [Self] {
        match self {
            Self::Draft => &[Self::Submitted],
            Self::Submitted => &[Self::Approved, Self::Rejected],
            Self::Approved => &[Self::Sent],
            Self::Sent => &[Self::Won, Self::Lost, Self::Expired],
            Self::Won => &[Self::Converted],
            Self::Rejected | Self::Lost | Self::Expired | Self::Converted => &[],
        }
    }
}

/// Two incomparable statuses were reached concurrently; `effective` is the one that won.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusConflict {
    /// All incomparable statuses of the same rank that were marked.
    pub marked: Vec<QuoteStatus>,
    /// The status the merge settled on.
    pub effective: QuoteStatus,
}

/// Plain last-writer-wins text fields of a quote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuoteField {
    /// Human-visible quote number.
    QuoteNo,
    /// Payment terms offered.
    PaymentTerms,
    /// Delivery terms offered.
    DeliveryTerms,
    /// The customer's response (pending, accepted, rejected, negotiating).
    CustomerResponse,
    /// Win or loss reason.
    WinLossReason,
}

impl QuoteField {
    /// Document key.
    pub fn key(self) -> &'static str {
        match self {
            Self::QuoteNo => "quote_no",
            Self::PaymentTerms => "payment_terms",
            Self::DeliveryTerms => "delivery_terms",
            Self::CustomerResponse => "customer_response",
            Self::WinLossReason => "win_loss_reason",
        }
    }
}

/// What a new quote starts with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewQuote {
    /// The customer quoted.
    pub customer_id: CustomerId,
    /// ISO 4217 currency of all prices.
    pub currency: String,
    /// Human-visible number (device prefix + local sequence, unique while offline).
    pub quote_no: Option<String>,
    /// Valid until.
    pub valid_until: Option<Millis>,
}

/// Fields of a line; on update, `None` leaves a field unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineInput {
    /// Product SKU (required when adding).
    pub sku: Option<String>,
    /// Description or configuration.
    pub description: Option<String>,
    /// Quantity in whole units.
    pub qty: Option<i64>,
    /// Unit price in minor units of the quote currency.
    pub unit_price_minor: Option<i64>,
    /// Discount in basis points (100 = 1 %).
    pub discount_bp: Option<i64>,
    /// Fractional sort key for display order.
    pub sort_key: Option<String>,
}

/// A quote line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteLine {
    /// Stable id.
    pub id: String,
    /// SKU.
    pub sku: String,
    /// Description.
    pub description: Option<String>,
    /// Quantity.
    pub qty: i64,
    /// Unit price in minor units.
    pub unit_price_minor: i64,
    /// Discount in basis points.
    pub discount_bp: i64,
    /// Sort key.
    pub sort_key: String,
    /// Removed lines are archived, not deleted.
    pub archived: bool,
}

impl QuoteLine {
    /// The line total in minor units, rounded half away from zero.
    pub fn total_minor(&self) -> i64 {
        let gross = i128::from(self.qty) * i128::from(self.unit_price_minor);
        let net = gross * i128::from(10_000 - self.discount_bp.clamp(0, 10_000));
        let q = (net.abs() + 5_000) / 10_000;
        let v = if net < 0 { -q } else { q };
        i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
    }
}

/// An approval decision recorded on a quote (add-only log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Stable id.
    pub id: String,
    /// `approved` or `rejected`.
    pub decision: String,
    /// Who decided.
    pub approver: String,
    /// In which role.
    pub role: String,
    /// Why.
    pub reason: Option<String>,
    /// When.
    pub at: Millis,
    /// The digest of the revision decided on (`None` for a record without one, which counts
    /// for no revision).
    pub digest: Option<String>,
    /// Set when the decision no longer holds because the quote's content changed since:
    /// what changed, for people.
    pub void: Option<String>,
}

/// A quote as read from its document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// Header.
    #[serde(flatten)]
    pub header: Header,
    /// The customer quoted.
    pub customer_id: CustomerId,
    /// Quote number.
    pub quote_no: Option<String>,
    /// Currency.
    pub currency: String,
    /// Effective status of the current revision.
    pub status: QuoteStatus,
    /// The current revision's number: 1 until the content changes after a submission.
    pub revision: u32,
    /// The digest of the current content (names the revision).
    pub digest: String,
    /// Incomparable statuses reached concurrently, if any.
    pub status_conflict: Option<StatusConflict>,
    /// Lines sorted by sort key then id (archived lines included, flagged).
    pub lines: Vec<QuoteLine>,
    /// Total of the active lines, derived on read (never stored).
    pub total: Money,
    /// Approvals.
    pub approvals: Vec<Approval>,
    /// Owner rep (manager-owned).
    pub owner: Option<String>,
    /// Valid until.
    pub valid_until: Option<Millis>,
    /// When it was sent.
    pub sent_at: Option<Millis>,
    /// When to follow up.
    pub follow_up_due: Option<Millis>,
    /// Payment terms.
    pub payment_terms: Option<String>,
    /// Delivery terms.
    pub delivery_terms: Option<String>,
    /// Customer response.
    pub customer_response: Option<String>,
    /// Win/loss reason.
    pub win_loss_reason: Option<String>,
    /// Notes (add-only).
    pub notes: Vec<Note>,
}

/// An edit to a quote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuoteEdit {
    /// Set a text field.
    Set(QuoteField, String),
    /// Change the currency (drafts only).
    SetCurrency(String),
    /// Set valid-until.
    SetValidUntil(Millis),
    /// Set the follow-up due time.
    SetFollowUpDue(Millis),
    /// Add a line under a fresh id (drafts only).
    AddLine(String, LineInput),
    /// Change a line (drafts only).
    UpdateLine(String, LineInput),
    /// Remove (archive) a line (drafts only).
    RemoveLine(String),
    /// Submit for approval.
    Submit,
    /// Approve (manager and above).
    Approve(Option<String>),
    /// Reject (manager and above).
    Reject(Option<String>),
    /// Mark as sent to the customer.
    Send,
    /// Mark as won.
    Win,
    /// Mark as lost, with a reason.
    Lose(Option<String>),
    /// Mark as expired.
    Expire,
    /// Mark as converted to an ERP order.
    Convert,
    /// Set the owner rep (manager).
    SetOwner(String),
    /// Add a note under a fresh id.
    AddNote(String, String),
    /// Archive (soft delete).
    Archive,
}

pub(super) fn create(
    root: &mut am::MapInit,
    new: &NewQuote,
    ctx: &EditCtx,
) -> Result<(), ModelError> {
    validate_currency(&new.currency)?;
    root.str("customer_id", &new.customer_id.to_string())
        .str("currency", &new.currency)
        .opt_str("quote_no", new.quote_no.as_deref())
        .opt_int("valid_until", new.valid_until)
        .empty_maps(&["lines", "approvals", "notes"]);
    let mut marks = am::MapInit::default();
    marks.int(QuoteStatus::Draft.as_str(), ctx.now);
    root.map("status_marks", marks);
    Ok(())
}

fn validate_currency(c: &str) -> Result<(), ModelError> {
    if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(ModelError::Invalid(format!(
            "`{c}` is not an ISO 4217 currency code"
        )))
    }
}

/// The statuses stored as marks bound to a revision (approvals are records, not marks).
const MARKED: [QuoteStatus; 6] = [
    QuoteStatus::Submitted,
    QuoteStatus::Sent,
    QuoteStatus::Won,
    QuoteStatus::Lost,
    QuoteStatus::Expired,
    QuoteStatus::Converted,
];

/// Hex digits of a revision digest (128 bits).
const DIGEST_HEX: usize = 32;

/// Whether `key` is a status mark this version writes: `draft`, or `<status>@<digest>` for a
/// status of [`MARKED`].
pub(crate) fn is_valid_mark(key: &str) -> bool {
    if key == QuoteStatus::Draft.as_str() {
        return true;
    }
    let Some((status, digest)) = key.split_once('@') else {
        return false;
    };
    QuoteStatus::parse(status).is_some_and(|s| MARKED.contains(&s))
        && digest.len() == DIGEST_HEX
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The content an approval binds to, in canonical form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Content {
    currency: String,
    valid_until: Option<Millis>,
    payment_terms: Option<String>,
    delivery_terms: Option<String>,
    /// Active lines, by id.
    lines: Vec<ContentLine>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ContentLine {
    id: String,
    sku: String,
    description: Option<String>,
    qty: i64,
    unit_price_minor: i64,
    discount_bp: i64,
}

impl Content {
    fn of(root: &am::HMap) -> Self {
        let mut lines: Vec<ContentLine> = am::hget_map(root, "lines")
            .map(am::hitems)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, l)| !am::hget_bool(l, "archived").unwrap_or(false))
            .map(|(id, l)| ContentLine {
                sku: am::hget_str(l, "sku").unwrap_or_default(),
                description: am::hget_str(l, "description"),
                qty: am::hget_i64(l, "qty").unwrap_or(0),
                unit_price_minor: am::hget_i64(l, "unit_price_minor").unwrap_or(0),
                discount_bp: am::hget_i64(l, "discount_bp").unwrap_or(0),
                id,
            })
            .collect();
        lines.sort_by(|a, b| a.id.cmp(&b.id));
        Self {
            currency: am::hget_str(root, "currency").unwrap_or_default(),
            valid_until: am::hget_i64(root, "valid_until"),
            payment_terms: am::hget_str(root, "payment_terms"),
            delivery_terms: am::hget_str(root, "delivery_terms"),
            lines,
        }
    }

    fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The revision digest: the first 128 bits of SHA-256 of the canonical JSON, in hex.
    fn digest(&self) -> String {
        use sha2::Digest;
        let d = sha2::Sha256::digest(self.json().as_bytes());
        hex::encode(&d[..DIGEST_HEX / 2])
    }

    /// What changed from `self` (an approved revision) to `now`, for people.
    fn changes_to(&self, now: &Self) -> String {
        let mut out = Vec::new();
        if self.currency != now.currency {
            out.push(format!("currency {} → {}", self.currency, now.currency));
        }
        if self.valid_until != now.valid_until {
            out.push("validity changed".to_string());
        }
        if self.payment_terms != now.payment_terms {
            out.push("payment terms changed".to_string());
        }
        if self.delivery_terms != now.delivery_terms {
            out.push("delivery terms changed".to_string());
        }
        for l in &self.lines {
            match now.lines.iter().find(|n| n.id == l.id) {
                None => out.push(format!("line {} ({}) removed", l.id, l.sku)),
                Some(n) if n != l => {
                    let mut what = Vec::new();
                    if n.unit_price_minor != l.unit_price_minor {
                        what.push(format!(
                            "unit price {} → {}",
                            l.unit_price_minor, n.unit_price_minor
                        ));
                    }
                    if n.qty != l.qty {
                        what.push(format!("quantity {} → {}", l.qty, n.qty));
                    }
                    if n.discount_bp != l.discount_bp {
                        what.push(format!("discount {} → {} bp", l.discount_bp, n.discount_bp));
                    }
                    if n.sku != l.sku || n.description != l.description {
                        what.push("product changed".to_string());
                    }
                    out.push(format!("line {} ({}): {}", l.id, l.sku, what.join(", ")));
                }
                Some(_) => {}
            }
        }
        for n in &now.lines {
            if !self.lines.iter().any(|l| l.id == n.id) {
                out.push(format!("line {} ({}) added", n.id, n.sku));
            }
        }
        if out.is_empty() {
            "the content changed".to_string()
        } else {
            out.join("; ")
        }
    }
}

/// The current content and status of a quote document being edited.
fn current(doc: &AutoCommit) -> Result<(Content, QuoteStatus), ModelError> {
    let root = am::hydrate_root(doc)?;
    let content = Content::of(&root);
    let digest = content.digest();
    let approvals = read_approvals(&root, &content);
    let (status, _, _) = status_from(&read_set(&root, "status_marks"), &approvals, &digest);
    Ok((content, status))
}

/// Marks `to` for the current revision, if the current status allows the move.
fn transition(doc: &mut AutoCommit, to: QuoteStatus, ctx: &EditCtx) -> Result<(), ModelError> {
    let (content, from) = current(doc)?;
    if !from.allowed_from().contains(&to) {
        return Err(ModelError::Invalid(format!(
            "a {} quote cannot become {}{}",
            from.as_str(),
            to.as_str(),
            match (from, to) {
                (QuoteStatus::Draft, QuoteStatus::Approved | QuoteStatus::Rejected) =>
                    "; submit it first",
                (QuoteStatus::Submitted, QuoteStatus::Sent) => "; it needs approval first",
                _ => "",
            }
        )));
    }
    let marks = am::req_map(doc, &ROOT, "status_marks")?;
    let key = format!("{}@{}", to.as_str(), content.digest());
    if am::scalar(doc, &marks, &key).is_none() {
        doc.put(&marks, key.as_str(), ctx.now)?;
    }
    Ok(())
}

/// Content may change until the quote is sent; a change to a submitted, approved or rejected
/// quote starts a new draft revision (which needs submitting and approving again).
fn require_editable(doc: &AutoCommit) -> Result<(), ModelError> {
    let (_, s) = current(doc)?;
    if s.rank() < QuoteStatus::Sent.rank() {
        Ok(())
    } else {
        Err(ModelError::Invalid(format!(
            "the quote is {}; its content is fixed once sent to the customer (make a new quote)",
            s.as_str()
        )))
    }
}

fn line(doc: &AutoCommit, id: &str) -> Result<ObjId, ModelError> {
    let lines = am::req_map(doc, &ROOT, "lines")?;
    am::get_map(doc, &lines, id).ok_or_else(|| ModelError::NoSuchItem {
        what: "line",
        id: id.to_string(),
    })
}

fn write_line(doc: &mut AutoCommit, l: &ObjId, input: &LineInput) -> Result<(), ModelError> {
    if input.qty.is_some_and(|q| q < 0) || input.unit_price_minor.is_some_and(|p| p < 0) {
        return Err(ModelError::Invalid(
            "quantity and price must not be negative".into(),
        ));
    }
    if input
        .discount_bp
        .is_some_and(|d| !(0..=10_000).contains(&d))
    {
        return Err(ModelError::Invalid(
            "discount is 0 to 10000 basis points".into(),
        ));
    }
    am::put_opt_str(doc, l, "sku", input.sku.as_deref())?;
    am::put_opt_str(doc, l, "description", input.description.as_deref())?;
    am::put_opt_i64(doc, l, "qty", input.qty)?;
    am::put_opt_i64(doc, l, "unit_price_minor", input.unit_price_minor)?;
    am::put_opt_i64(doc, l, "discount_bp", input.discount_bp)?;
    am::put_opt_str(doc, l, "sort_key", input.sort_key.as_deref())
}

/// Approves or rejects the current revision: an approval record bound to its digest, with a
/// frozen copy of the content decided on.
fn decide(
    doc: &mut AutoCommit,
    to: QuoteStatus,
    reason: Option<&str>,
    ctx: &EditCtx,
) -> Result<(), ModelError> {
    write_governed(
        doc,
        GovernedField::QuoteApproval,
        |d, _| {
            let (content, from) = current(d)?;
            if !from.allowed_from().contains(&to) {
                return Err(ModelError::Invalid(format!(
                    "a {} quote cannot become {}{}",
                    from.as_str(),
                    to.as_str(),
                    if from == QuoteStatus::Draft {
                        "; submit it first"
                    } else {
                        ""
                    }
                )));
            }
            let approvals = am::req_map(d, &ROOT, "approvals")?;
            let given = d.length(&approvals) as u64;
            let key = super::derived_uuid(
                ctx.now,
                &[d.get_actor().to_bytes(), b"approval", &given.to_le_bytes()],
            );
            let a = am::new_map(d, &approvals, &key.simple().to_string())?;
            d.put(&a, "decision", to.as_str())?;
            d.put(&a, "approver", ctx.author.as_str())?;
            d.put(&a, "role", ctx.role.as_str())?;
            am::put_opt_str(d, &a, "reason", reason)?;
            d.put(&a, "at", ctx.now)?;
            d.put(&a, "digest", content.digest().as_str())?;
            d.put(&a, "content", content.json().as_str())?;
            Ok(())
        },
        ctx,
    )
}

pub(super) fn apply(
    doc: &mut AutoCommit,
    edit: &QuoteEdit,
    ctx: &EditCtx,
) -> Result<(), ModelError> {
    match edit {
        QuoteEdit::Set(f, v) => {
            if matches!(f, QuoteField::PaymentTerms | QuoteField::DeliveryTerms) {
                require_editable(doc)?;
            }
            doc.put(ROOT, f.key(), v.as_str())?;
        }
        QuoteEdit::SetCurrency(c) => {
            require_editable(doc)?;
            validate_currency(c)?;
            doc.put(ROOT, "currency", c.as_str())?;
        }
        QuoteEdit::SetValidUntil(t) => {
            require_editable(doc)?;
            doc.put(ROOT, "valid_until", *t)?;
        }
        QuoteEdit::SetFollowUpDue(t) => {
            doc.put(ROOT, "follow_up_due", *t)?;
        }
        QuoteEdit::AddLine(id, input) => {
            require_editable(doc)?;
            if input.sku.as_deref().is_none_or(|s| s.trim().is_empty()) {
                return Err(ModelError::Invalid("a line needs a SKU".into()));
            }
            let lines = am::req_map(doc, &ROOT, "lines")?;
            if id.is_empty() || am::get_map(doc, &lines, id).is_some() {
                return Err(ModelError::Invalid(format!(
                    "line id `{id}` is empty or used"
                )));
            }
            let l = am::new_map(doc, &lines, id)?;
            doc.put(&l, "qty", input.qty.unwrap_or(1))?;
            doc.put(&l, "unit_price_minor", input.unit_price_minor.unwrap_or(0))?;
            doc.put(&l, "discount_bp", input.discount_bp.unwrap_or(0))?;
            doc.put(&l, "archived", false)?;
            if input.sort_key.is_none() {
                doc.put(&l, "sort_key", id.as_str())?;
            }
            write_line(doc, &l, input)?;
        }
        QuoteEdit::UpdateLine(id, input) => {
            require_editable(doc)?;
            let l = line(doc, id)?;
            write_line(doc, &l, input)?;
        }
        QuoteEdit::RemoveLine(id) => {
            require_editable(doc)?;
            let l = line(doc, id)?;
            doc.put(&l, "archived", true)?;
        }
        QuoteEdit::Submit => transition(doc, QuoteStatus::Submitted, ctx)?,
        QuoteEdit::Approve(r) => decide(doc, QuoteStatus::Approved, r.as_deref(), ctx)?,
        QuoteEdit::Reject(r) => decide(doc, QuoteStatus::Rejected, r.as_deref(), ctx)?,
        QuoteEdit::Send => {
            transition(doc, QuoteStatus::Sent, ctx)?;
            doc.put(ROOT, "sent_at", ctx.now)?;
            // Follow up within three days of sending (the follow-up rule).
            doc.put(ROOT, "follow_up_due", ctx.now + 3 * 24 * 3600 * 1000)?;
        }
        QuoteEdit::Win => transition(doc, QuoteStatus::Won, ctx)?,
        QuoteEdit::Lose(reason) => {
            transition(doc, QuoteStatus::Lost, ctx)?;
            am::put_opt_str(doc, &ROOT, "win_loss_reason", reason.as_deref())?;
        }
        QuoteEdit::Expire => transition(doc, QuoteStatus::Expired, ctx)?,
        QuoteEdit::Convert => transition(doc, QuoteStatus::Converted, ctx)?,
        QuoteEdit::SetOwner(o) => write_governed(
            doc,
            GovernedField::Owner,
            |d, g| Ok(d.put(g, "owner", o.as_str())?),
            ctx,
        )?,
        QuoteEdit::AddNote(id, text) => add_note(doc, "notes", id, text, ctx)?,
        QuoteEdit::Archive => set_archived(doc, true)?,
    }
    Ok(())
}

/// The approval records of a quote, each marked void when it decided on other content than
/// `now`.
fn read_approvals(root: &am::HMap, now: &Content) -> Vec<Approval> {
    let digest = now.digest();
    let mut approvals: Vec<Approval> = am::hget_map(root, "approvals")
        .map(am::hitems)
        .unwrap_or_default()
        .into_iter()
        .map(|(id, a)| {
            let decided_on = am::hget_str(a, "digest");
            let void = match &decided_on {
                Some(d) if *d == digest => None,
                Some(_) => Some(
                    am::hget_str(a, "content")
                        .and_then(|c| serde_json::from_str::<Content>(&c).ok())
                        .map_or_else(
                            || "the content changed after the decision".to_string(),
                            |old| old.changes_to(now),
                        ),
                ),
                None => Some("the decision names no revision".to_string()),
            };
            Approval {
                decision: am::hget_str(a, "decision").unwrap_or_default(),
                approver: am::hget_str(a, "approver").unwrap_or_default(),
                role: am::hget_str(a, "role").unwrap_or_default(),
                reason: am::hget_str(a, "reason"),
                at: am::hget_i64(a, "at").unwrap_or(0),
                digest: decided_on,
                void,
                id,
            }
        })
        .collect();
    approvals.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    approvals
}

/// The status of revision `digest` from the marks and approvals, walking the chain
/// draft → submitted → approved/rejected → sent → won/lost/expired → converted (a step counts
/// only when the one before holds); the conflict, if incomparable statuses were reached; and
/// the revision's number.
fn status_from(
    marks: &[String],
    approvals: &[Approval],
    digest: &str,
) -> (QuoteStatus, Option<StatusConflict>, u32) {
    let at = |s: QuoteStatus| {
        marks
            .iter()
            .any(|m| *m == format!("{}@{digest}", s.as_str()))
    };
    let mut submitted: Vec<&str> = marks
        .iter()
        .filter_map(|m| m.strip_prefix("submitted@"))
        .collect();
    submitted.sort_unstable();
    submitted.dedup();
    let revision = u32::try_from(submitted.len()).unwrap_or(u32::MAX);
    let revision = if submitted.contains(&digest) {
        revision.max(1)
    } else {
        revision.saturating_add(1)
    };
    if !at(QuoteStatus::Submitted) {
        return (QuoteStatus::Draft, None, revision);
    }
    let decided = |d: QuoteStatus| {
        approvals
            .iter()
            .any(|a| a.void.is_none() && a.decision == d.as_str())
    };
    let decisions: Vec<QuoteStatus> = [QuoteStatus::Approved, QuoteStatus::Rejected]
        .into_iter()
        .filter(|d| decided(*d))
        .collect();
    let conflict_of = |same: Vec<QuoteStatus>, effective| {
        (same.len() > 1).then(|| {
            let mut marked = same;
            marked.sort_by_key(|x| x.as_str());
            StatusConflict { marked, effective }
        })
    };
    let Some(decision) = decisions.iter().copied().reduce(QuoteStatus::join) else {
        return (QuoteStatus::Submitted, None, revision);
    };
    if decision == QuoteStatus::Rejected || !at(QuoteStatus::Sent) {
        return (decision, conflict_of(decisions, decision), revision);
    }
    let outcomes: Vec<QuoteStatus> = [QuoteStatus::Won, QuoteStatus::Lost, QuoteStatus::Expired]
        .into_iter()
        .filter(|s| at(*s))
        .collect();
    let Some(outcome) = outcomes.iter().copied().reduce(QuoteStatus::join) else {
        return (QuoteStatus::Sent, None, revision);
    };
    let effective = if outcome == QuoteStatus::Won && at(QuoteStatus::Converted) {
        QuoteStatus::Converted
    } else {
        outcome
    };
    (effective, conflict_of(outcomes, effective), revision)
}

pub(super) fn read(root: &am::HMap, header: Header) -> Result<Quote, ModelError> {
    let customer_id = am::hget_str(root, "customer_id")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ModelError::Malformed("quote without customer".into()))?;
    let currency = am::hget_str(root, "currency")
        .ok_or_else(|| ModelError::Malformed("quote without currency".into()))?;
    let coll = |k: &str| {
        am::hget_map(root, k)
            .map(|m| am::hitems(m))
            .unwrap_or_default()
    };
    let mut lines: Vec<QuoteLine> = coll("lines")
        .into_iter()
        .map(|(id, l)| QuoteLine {
            sku: am::hget_str(l, "sku").unwrap_or_default(),
            description: am::hget_str(l, "description"),
            qty: am::hget_i64(l, "qty").unwrap_or(0),
            unit_price_minor: am::hget_i64(l, "unit_price_minor").unwrap_or(0),
            discount_bp: am::hget_i64(l, "discount_bp").unwrap_or(0),
            sort_key: am::hget_str(l, "sort_key").unwrap_or_else(|| id.clone()),
            archived: am::hget_bool(l, "archived").unwrap_or(false),
            id,
        })
        .collect();
    lines.sort_by(|a, b| (&a.sort_key, &a.id).cmp(&(&b.sort_key, &b.id)));
    let total = lines
        .iter()
        .filter(|l| !l.archived)
        .fold(0i64, |acc, l| acc.saturating_add(l.total_minor()));
    let content = Content::of(root);
    let digest = content.digest();
    let approvals = read_approvals(root, &content);
    let (status, status_conflict, revision) =
        status_from(&read_set(root, "status_marks"), &approvals, &digest);
    let governed = am::hget_map(root, "governed");
    Ok(Quote {
        customer_id,
        quote_no: am::hget_str(root, "quote_no"),
        total: Money {
            amount_minor: total,
            currency: currency.clone(),
        },
        currency,
        status,
        revision,
        digest,
        status_conflict,
        lines,
        approvals,
        owner: governed.as_ref().and_then(|g| am::hget_str(g, "owner")),
        valid_until: am::hget_i64(root, "valid_until"),
        sent_at: am::hget_i64(root, "sent_at"),
        follow_up_due: am::hget_i64(root, "follow_up_due"),
        payment_terms: am::hget_str(root, "payment_terms"),
        delivery_terms: am::hget_str(root, "delivery_terms"),
        customer_response: am::hget_str(root, "customer_response"),
        win_loss_reason: am::hget_str(root, "win_loss_reason"),
        notes: read_notes(root, "notes"),
        header,
    })
}
