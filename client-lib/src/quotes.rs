//! The quote handle.

use fieldsync_core::model::{
    self, Document, Edit, LineInput, NewQuote, Quote, QuoteEdit, QuoteField, new_item_id,
};
use fieldsync_core::{CustomerId, DocKind, Millis, QuoteId};

use crate::rows::{self, QuoteFilter, QuoteLineRow, QuoteRow};
use crate::{Client, ClientError, typed_document};

/// Quotes of the replica; get one with [`Client::quotes`].
#[derive(Clone, Copy, Debug)]
pub struct Quotes<'c> {
    client: &'c Client,
}

impl<'c> Quotes<'c> {
    pub(crate) fn new(client: &'c Client) -> Self {
        Self { client }
    }

    /// Drafts a quote to `new.customer_id` and returns its id. The quote takes the customer's
    /// organisation and scope; the customer must be in the replica. The currency must be an
    /// ISO 4217 code such as `CNY`.
    pub fn create(&self, new: NewQuote) -> Result<QuoteId, ClientError> {
        self.client
            .create_for_customer(new.customer_id, |doc, id, org, scope, ctx| {
                model::create_quote(doc, id, org, scope, &new, ctx)
            })
            .map(QuoteId)
    }

    /// Drafts a quote together with its lines (and any other edits) as one change: all of
    /// it is written, or nothing.
    pub fn create_with(&self, new: NewQuote, edits: &[QuoteEdit]) -> Result<QuoteId, ClientError> {
        self.client
            .create_for_customer(new.customer_id, |doc, id, org, scope, ctx| {
                model::create_quote(doc, id, org, scope, &new, ctx)?;
                edits
                    .iter()
                    .try_for_each(|e| model::apply_edit(doc, &Edit::Quote(e.clone()), ctx))
            })
            .map(QuoteId)
    }

    /// Reads a quote document (lines, derived total, status, approvals …).
    pub fn get(&self, id: QuoteId) -> Result<Quote, ClientError> {
        self.client
            .with_store(|store| match typed_document(store, id, DocKind::Quote)? {
                Document::Quote(q) => Ok(q),
                other => Err(ClientError::WrongKind {
                    id: id.into(),
                    expected: DocKind::Quote,
                    actual: other.header().kind,
                }),
            })
    }

    /// Applies one edit to a quote.
    pub fn edit(&self, id: QuoteId, edit: QuoteEdit) -> Result<(), ClientError> {
        self.client.apply_edit(id, Edit::Quote(edit))
    }

    /// Applies several edits to a quote as one change: all of them or none.
    pub fn edit_all(&self, id: QuoteId, edits: &[QuoteEdit]) -> Result<(), ClientError> {
        self.client.edit_doc(id, |doc, ctx| {
            edits
                .iter()
                .try_for_each(|e| model::apply_edit(doc, &Edit::Quote(e.clone()), ctx))
        })
    }

    /// Archives (soft-deletes) a quote.
    pub fn archive(&self, id: QuoteId) -> Result<(), ClientError> {
        self.edit(id, QuoteEdit::Archive)
    }

    /// Quotes, newest first, filtered and paged.
    pub fn list(&self, filter: &QuoteFilter) -> Result<Vec<QuoteRow>, ClientError> {
        self.client.read(|c| rows::list_quotes(c, filter))
    }

    /// Every non-archived quote to a customer, newest first (price protection: what was
    /// offered before, by anyone).
    pub fn history(&self, customer: CustomerId) -> Result<Vec<QuoteRow>, ClientError> {
        self.list(&QuoteFilter::new().customer(customer))
    }

    /// Sent quotes whose follow-up is due at or before `at` (ms since the epoch), most
    /// overdue first. Sending a quote sets its follow-up to three days later.
    pub fn due_for_follow_up(&self, at: Millis) -> Result<Vec<QuoteRow>, ClientError> {
        self.client.read(|c| rows::quotes_due(c, at))
    }

    /// Every active line quoting `sku` to any customer, newest first.
    pub fn price_history(&self, sku: &str) -> Result<Vec<QuoteLineRow>, ClientError> {
        self.client
            .read(|c| rows::price_history(c, rows::LinesOf::Sku(sku)))
    }

    /// Every active line quoted to `customer`, by SKU, newest first: what it was offered
    /// before, at which price (price protection).
    pub fn customer_prices(&self, customer: CustomerId) -> Result<Vec<QuoteLineRow>, ClientError> {
        self.client
            .read(|c| rows::price_history(c, rows::LinesOf::Customer(customer)))
    }

    // -----------------------------------------------------------------------------------------
    // Convenience edits.

    /// Sets a text field (quote number, terms, customer response, win/loss reason).
    pub fn set(
        &self,
        id: QuoteId,
        field: QuoteField,
        value: impl Into<String>,
    ) -> Result<(), ClientError> {
        self.edit(id, QuoteEdit::Set(field, value.into()))
    }

    /// Adds a line (a SKU is required; quantity defaults to 1) to a draft and returns its new
    /// item id.
    pub fn add_line(&self, id: QuoteId, line: LineInput) -> Result<String, ClientError> {
        let item = new_item_id();
        self.edit(id, QuoteEdit::AddLine(item.clone(), line))?;
        Ok(item)
    }

    /// Changes a line of a draft (`None` fields stay as they are).
    pub fn update_line(
        &self,
        id: QuoteId,
        line_id: &str,
        changes: LineInput,
    ) -> Result<(), ClientError> {
        self.edit(id, QuoteEdit::UpdateLine(line_id.into(), changes))
    }

    /// Removes (archives) a line of a draft.
    pub fn remove_line(&self, id: QuoteId, line_id: &str) -> Result<(), ClientError> {
        self.edit(id, QuoteEdit::RemoveLine(line_id.into()))
    }

    /// Sets when to follow up with the customer.
    pub fn set_follow_up_due(&self, id: QuoteId, at: Millis) -> Result<(), ClientError> {
        self.edit(id, QuoteEdit::SetFollowUpDue(at))
    }

    /// Submits a draft for approval; lines and prices are locked from now on.
    pub fn submit(&self, id: QuoteId) -> Result<(), ClientError> {
        self.edit(id, QuoteEdit::Submit)
    }

    /// Approves a submitted quote (manager and above).
    pub fn approve(&self, id: QuoteId, reason: Option<&str>) -> Result<(), ClientError> {
        self.edit(id, QuoteEdit::Approve(reason.map(str::to_string)))
    }

    /// Rejects a submitted quote (manager and above).
    pub fn reject(&self, id: QuoteId, reason: Option<&str>) -> Result<(), ClientError> {
        self.edit(id, QuoteEdit::Reject(reason.map(str::to_string)))
    }

    /// Marks an approved quote as sent to the customer; the follow-up falls due in 3 days.
    pub fn send(&self, id: QuoteId) -> Result<(), ClientError> {
        self.edit(id, QuoteEdit::Send)
    }

    /// Marks a sent quote as won.
    pub fn win(&self, id: QuoteId) -> Result<(), ClientError> {
        self.edit(id, QuoteEdit::Win)
    }

    /// Marks a sent quote as lost, with an optional reason.
    pub fn lose(&self, id: QuoteId, reason: Option<&str>) -> Result<(), ClientError> {
        self.edit(id, QuoteEdit::Lose(reason.map(str::to_string)))
    }

    /// Adds a note and returns its new item id.
    pub fn add_note(&self, id: QuoteId, text: impl Into<String>) -> Result<String, ClientError> {
        let item = new_item_id();
        self.edit(id, QuoteEdit::AddNote(item.clone(), text.into()))?;
        Ok(item)
    }
}
