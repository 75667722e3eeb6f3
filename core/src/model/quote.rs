//! The quote document: line items, currency, a monotone status and approvals.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ROOT, ReadDoc};
use serde::{Deserialize, Serialize};

use super::{
    EditCtx, Header, ModelError, Money, Note, add_note, am, read_notes, read_set, set_archived,
    write_governed,
};
use crate::ids::{DocId, GovernedField, Millis};

/// Quote status, a monotone lattice:
/// `draft < submitted < {approved, rejected} < sent < {won, lost, expired} < converted`.
/// Status is stored as add-only marks; the effective status is the highest mark, so an approved
/// quote never regresses to draft because a laptop synced late. Incomparable marks of the same
/// rank are resolved deterministically (rejected over approved, lost over expired over won) and
/// reported as a [`StatusConflict`].
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
    pub customer_id: DocId,
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
}

/// A quote as read from its document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// Header.
    #[serde(flatten)]
    pub header: Header,
    /// The customer quoted.
    pub customer_id: DocId,
    /// Quote number.
    pub quote_no: Option<String>,
    /// Currency.
    pub currency: String,
    /// Effective status.
    pub status: QuoteStatus,
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

fn mark(doc: &mut AutoCommit, s: QuoteStatus, ctx: &EditCtx) -> Result<(), ModelError> {
    let marks = am::req_map(doc, &ROOT, "status_marks")?;
    if am::scalar(doc, &marks, s.as_str()).is_none() {
        doc.put(&marks, s.as_str(), ctx.now)?;
    }
    Ok(())
}

fn transition(doc: &mut AutoCommit, to: QuoteStatus, ctx: &EditCtx) -> Result<(), ModelError> {
    let (from, _) = status_of(doc);
    if !from.allowed_from().contains(&to) {
        return Err(ModelError::Invalid(format!(
            "a {} quote cannot become {}",
            from.as_str(),
            to.as_str()
        )));
    }
    mark(doc, to, ctx)
}

fn require_draft(doc: &AutoCommit) -> Result<(), ModelError> {
    let (s, _) = status_of(doc);
    if s == QuoteStatus::Draft {
        Ok(())
    } else {
        Err(ModelError::Invalid(format!(
            "the quote is {}; prices and lines are locked after submission",
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
            transition(d, to, ctx)?;
            let approvals = am::req_map(d, &ROOT, "approvals")?;
            let a = am::new_map(d, &approvals, &super::new_item_id())?;
            d.put(&a, "decision", to.as_str())?;
            d.put(&a, "approver", ctx.author.as_str())?;
            d.put(&a, "role", ctx.role.as_str())?;
            am::put_opt_str(d, &a, "reason", reason)?;
            d.put(&a, "at", ctx.now)?;
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
            doc.put(ROOT, f.key(), v.as_str())?;
        }
        QuoteEdit::SetCurrency(c) => {
            require_draft(doc)?;
            validate_currency(c)?;
            doc.put(ROOT, "currency", c.as_str())?;
        }
        QuoteEdit::SetValidUntil(t) => {
            doc.put(ROOT, "valid_until", *t)?;
        }
        QuoteEdit::SetFollowUpDue(t) => {
            doc.put(ROOT, "follow_up_due", *t)?;
        }
        QuoteEdit::AddLine(id, input) => {
            require_draft(doc)?;
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
            require_draft(doc)?;
            let l = line(doc, id)?;
            write_line(doc, &l, input)?;
        }
        QuoteEdit::RemoveLine(id) => {
            require_draft(doc)?;
            let l = line(doc, id)?;
            doc.put(&l, "archived", true)?;
        }
        QuoteEdit::Submit => transition(doc, QuoteStatus::Submitted, ctx)?,
        QuoteEdit::Approve(r) => decide(doc, QuoteStatus::Approved, r.as_deref(), ctx)?,
        QuoteEdit::Reject(r) => decide(doc, QuoteStatus::Rejected, r.as_deref(), ctx)?,
        QuoteEdit::Send => {
            transition(doc, QuoteStatus::Sent, ctx)?;
            doc.put(ROOT, "sent_at", ctx.now)?;
            // Follow up within three days of sending (DOMAIN.md F6).
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

/// The effective status and, if incomparable statuses were marked, the conflict.
fn status_of<R: ReadDoc>(doc: &R) -> (QuoteStatus, Option<StatusConflict>) {
    status_from(&super::doc_set(doc, "status_marks"))
}

/// The effective status of a set of marks and, if incomparable statuses were marked, the conflict.
fn status_from(marks: &[String]) -> (QuoteStatus, Option<StatusConflict>) {
    let marks: Vec<QuoteStatus> = marks.iter().filter_map(|s| QuoteStatus::parse(s)).collect();
    let effective = marks
        .iter()
        .copied()
        .fold(QuoteStatus::Draft, QuoteStatus::join);
    let conflict = (0..=5u8).find_map(|rank| {
        let same: Vec<QuoteStatus> = marks.iter().copied().filter(|m| m.rank() == rank).collect();
        (same.len() > 1).then(|| StatusConflict {
            marked: {
                let mut s = same;
                s.sort_by_key(|x| x.as_str());
                s
            },
            effective,
        })
    });
    (effective, conflict)
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
    let mut approvals: Vec<Approval> = coll("approvals")
        .into_iter()
        .map(|(id, a)| Approval {
            decision: am::hget_str(a, "decision").unwrap_or_default(),
            approver: am::hget_str(a, "approver").unwrap_or_default(),
            role: am::hget_str(a, "role").unwrap_or_default(),
            reason: am::hget_str(a, "reason"),
            at: am::hget_i64(a, "at").unwrap_or(0),
            id,
        })
        .collect();
    approvals.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    let (status, status_conflict) = status_from(&read_set(root, "status_marks"));
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
