//! `fieldsync quote …`: the command line of the quote commands.

use super::*;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuoteStatusArg {
    Draft,
    Submitted,
    Approved,
    Rejected,
    Sent,
    Won,
    Lost,
    Expired,
    Converted,
}

impl From<QuoteStatusArg> for QuoteStatus {
    fn from(s: QuoteStatusArg) -> Self {
        match s {
            QuoteStatusArg::Draft => Self::Draft,
            QuoteStatusArg::Submitted => Self::Submitted,
            QuoteStatusArg::Approved => Self::Approved,
            QuoteStatusArg::Rejected => Self::Rejected,
            QuoteStatusArg::Sent => Self::Sent,
            QuoteStatusArg::Won => Self::Won,
            QuoteStatusArg::Lost => Self::Lost,
            QuoteStatusArg::Expired => Self::Expired,
            QuoteStatusArg::Converted => Self::Converted,
        }
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum QuoteCmd {
    /// Start a draft quote for a customer
    New {
        /// The customer: id, id prefix or name
        #[arg(long, value_name = "CUSTOMER")]
        customer: String,
        /// ISO 4217 currency of all prices
        #[arg(long)]
        currency: String,
        /// Quote number
        #[arg(long)]
        number: Option<String>,
        /// Valid until: 2026-12-08 or 2026-12-08T09:30, read as UTC
        #[arg(long, value_name = "DATE")]
        valid_until: Option<String>,
        /// Print the quote as JSON
        #[arg(long)]
        json: bool,
    },
    /// Add a line to a quote (before it is sent; a submitted quote becomes a new draft
    /// revision)
    AddLine {
        /// The quote: id or id prefix
        #[arg(value_name = "QUOTE")]
        id: String,
        /// Product SKU
        #[arg(long)]
        sku: String,
        /// Quantity (whole units)
        #[arg(long)]
        qty: i64,
        /// Unit price in the quote currency, e.g. 1250.50 (two decimals at most)
        #[arg(long)]
        price: String,
        /// Description
        #[arg(long)]
        description: Option<String>,
        /// Discount in percent, e.g. 5 or 2.5 (two decimals at most)
        #[arg(long)]
        discount: Option<String>,
        /// Print the quote as JSON
        #[arg(long)]
        json: bool,
    },
    /// Change a line's SKU, quantity, price, discount or description
    UpdateLine {
        /// The quote: id or id prefix
        #[arg(value_name = "QUOTE")]
        id: String,
        /// The line: its id or id prefix (as `quote show` lists them), or its SKU
        #[arg(value_name = "LINE")]
        line: String,
        /// New SKU
        #[arg(long)]
        sku: Option<String>,
        /// New quantity (whole units)
        #[arg(long)]
        qty: Option<i64>,
        /// New unit price, e.g. 1250.50 (two decimals at most)
        #[arg(long)]
        price: Option<String>,
        /// New description
        #[arg(long)]
        description: Option<String>,
        /// New discount in percent, e.g. 5 or 2.5 (0 for none)
        #[arg(long)]
        discount: Option<String>,
        /// Print the quote as JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove a line (kept in the document as removed)
    RemoveLine {
        /// The quote: id or id prefix
        #[arg(value_name = "QUOTE")]
        id: String,
        /// The line: its id or id prefix (as `quote show` lists them), or its SKU
        #[arg(value_name = "LINE")]
        line: String,
        /// Print the quote as JSON
        #[arg(long)]
        json: bool,
    },
    /// Set the quote number, terms, the customer's response or the win/loss reason (all in
    /// one change)
    Set {
        /// The quote: id or id prefix
        #[arg(value_name = "QUOTE")]
        id: String,
        /// Quote number
        #[arg(long)]
        number: Option<String>,
        /// Payment terms offered
        #[arg(long)]
        payment_terms: Option<String>,
        /// Delivery terms offered
        #[arg(long)]
        delivery_terms: Option<String>,
        /// The customer's response (pending, accepted, rejected, negotiating, …)
        #[arg(long)]
        customer_response: Option<String>,
        /// Why it was won or lost
        #[arg(long)]
        win_loss_reason: Option<String>,
        /// Currency of all prices (drafts: before it is sent)
        #[arg(long)]
        currency: Option<String>,
        /// Print the quote as JSON
        #[arg(long)]
        json: bool,
    },
    /// Set until when the offer is valid
    ValidUntil(QuoteDateArgs),
    /// Set when to follow up with the customer (sending sets it to three days later)
    FollowUp(QuoteDateArgs),
    /// List quotes, newest first
    List {
        /// Only quotes to this customer (id, id prefix or name)
        #[arg(long, value_name = "CUSTOMER")]
        customer: Option<String>,
        /// Only quotes with this status
        #[arg(long, value_enum)]
        status: Option<QuoteStatusArg>,
        /// Only quotes this rep owns
        #[arg(long)]
        owner: Option<String>,
        /// Include archived quotes
        #[arg(long)]
        all: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Submit a draft for approval
    Submit(QuoteIdArgs),
    /// Approve a submitted quote (manager and above)
    Approve(QuoteDecisionArgs),
    /// Reject a submitted quote (manager and above)
    Reject(QuoteDecisionArgs),
    /// Mark an approved quote as sent to the customer (the follow-up falls due in 3 days)
    Send(QuoteIdArgs),
    /// Mark a sent quote as won
    Win(QuoteIdArgs),
    /// Mark a sent quote as lost
    Lose(QuoteDecisionArgs),
    /// Mark a sent quote as expired
    Expire(QuoteIdArgs),
    /// Mark a won quote as converted to an ERP order
    Convert(QuoteIdArgs),
    /// Assign the owner rep (manager and above)
    SetOwner {
        /// The quote: id or id prefix
        #[arg(value_name = "QUOTE")]
        id: String,
        /// The owner's name
        #[arg(value_name = "OWNER")]
        owner: String,
        /// Print the quote as JSON
        #[arg(long)]
        json: bool,
    },
    /// Add a note (notes are kept, never edited)
    AddNote {
        /// The quote: id or id prefix
        #[arg(value_name = "QUOTE")]
        id: String,
        /// The note
        text: String,
        /// Print the quote as JSON
        #[arg(long)]
        json: bool,
    },
    /// Archive a quote (hidden from listings, never deleted)
    Archive(QuoteIdArgs),
    /// Show a quote
    Show(QuoteIdArgs),
    /// Sent quotes whose follow-up is due, most overdue first
    Due {
        /// Due by this time: 2026-12-08 or 2026-12-08T09:30, read as UTC [default: now]
        #[arg(long, value_name = "DATE")]
        at: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Every quote to a customer, by anyone, newest first (what was offered before)
    History {
        /// The customer: id, id prefix or name
        #[arg(value_name = "CUSTOMER")]
        customer: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Every line quoting a SKU to any customer, newest first
    PriceHistory {
        /// The SKU
        sku: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Attach a file (photo, signed PDF); its bytes upload at the next sync
    Attach(AttachArgs),
}

#[derive(Args, Debug)]
pub(crate) struct QuoteIdArgs {
    /// The quote: id or id prefix
    #[arg(value_name = "QUOTE")]
    pub(crate) id: String,
    /// Print the quote as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct QuoteDecisionArgs {
    /// The quote: id or id prefix
    #[arg(value_name = "QUOTE")]
    pub(crate) id: String,
    /// Why
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Print the quote as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct QuoteDateArgs {
    /// The quote: id or id prefix
    #[arg(value_name = "QUOTE")]
    pub(crate) id: String,
    /// 2026-12-08 or 2026-12-08T09:30, read as UTC
    #[arg(value_name = "DATE")]
    pub(crate) date: String,
    /// Print the quote as JSON
    #[arg(long)]
    pub(crate) json: bool,
}
