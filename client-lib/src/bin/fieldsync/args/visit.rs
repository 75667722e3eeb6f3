//! `fieldsync visit …`: the command line of the visit commands.

use super::*;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VisitStatusArg {
    Planned,
    Cancelled,
    Done,
}

impl From<VisitStatusArg> for VisitStatus {
    fn from(s: VisitStatusArg) -> Self {
        match s {
            VisitStatusArg::Planned => Self::Planned,
            VisitStatusArg::Cancelled => Self::Cancelled,
            VisitStatusArg::Done => Self::Done,
        }
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum VisitCmd {
    /// Log a visit at a customer (or plan one: --status planned --at DATE)
    Log {
        /// The customer: id, id prefix or name
        #[arg(long, value_name = "CUSTOMER")]
        customer: String,
        /// Minutes and notes
        #[arg(long)]
        notes: String,
        /// Status
        #[arg(long, value_enum, default_value_t = VisitStatusArg::Done)]
        status: VisitStatusArg,
        /// Kind (sales_call, return_visit, service_repair, …) [default: sales_call]
        #[arg(long)]
        kind: Option<String>,
        /// Where it took place
        #[arg(long)]
        location: Option<String>,
        /// When: 2026-12-08 or 2026-12-08T09:30, read as UTC [default: now]
        #[arg(long, value_name = "DATE")]
        at: Option<String>,
        /// Print the visit as JSON
        #[arg(long)]
        json: bool,
    },
    /// Attach a file (photo, signed PDF); its bytes upload at the next sync
    Attach(AttachArgs),
    /// Show a visit, with its needs, tasks and comments
    Show(VisitIdArgs),
    /// List visits, newest first
    List {
        /// Only visits to this customer (id, id prefix or name)
        #[arg(long, value_name = "CUSTOMER")]
        customer: Option<String>,
        /// Only visits logged by this author
        #[arg(long)]
        author: Option<String>,
        /// Only visits with this status
        #[arg(long, value_enum)]
        status: Option<VisitStatusArg>,
        /// Include archived visits
        #[arg(long)]
        all: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Mark a visit planned, cancelled or done (merges keep the highest: done beats
    /// cancelled beats planned)
    SetStatus {
        /// The visit: id or id prefix
        #[arg(value_name = "VISIT")]
        id: String,
        /// The status
        #[arg(value_enum)]
        status: VisitStatusArg,
        /// Print the visit as JSON
        #[arg(long)]
        json: bool,
    },
    /// Change a visit's kind, location, notes or time (all in one change)
    Edit {
        /// The visit: id or id prefix
        #[arg(value_name = "VISIT")]
        id: String,
        /// New kind (sales_call, return_visit, quote_follow_up, service_repair,
        /// complaint_intake, care, other)
        #[arg(long)]
        kind: Option<String>,
        /// New location
        #[arg(long)]
        location: Option<String>,
        /// New minutes and notes (replace the old ones)
        #[arg(long)]
        notes: Option<String>,
        /// New time: 2026-12-08 or 2026-12-08T09:30, read as UTC
        #[arg(long, value_name = "DATE")]
        at: Option<String>,
        /// Print the visit as JSON
        #[arg(long)]
        json: bool,
    },
    /// Record the customer's satisfaction, 1 (poor) to 5 (excellent)
    Satisfaction {
        /// The visit: id or id prefix
        #[arg(value_name = "VISIT")]
        id: String,
        /// 1 to 5
        #[arg(value_name = "RATING")]
        rating: i64,
        /// Print the visit as JSON
        #[arg(long)]
        json: bool,
    },
    /// Record that a contact of the customer was met
    AddContactMet {
        /// The visit: id or id prefix
        #[arg(value_name = "VISIT")]
        id: String,
        /// The contact: its id or id prefix (as `customer show` lists them), or its name
        #[arg(value_name = "CONTACT")]
        contact: String,
        /// Print the visit as JSON
        #[arg(long)]
        json: bool,
    },
    /// Record a need the customer mentioned
    AddNeed {
        /// The visit: id or id prefix
        #[arg(value_name = "VISIT")]
        id: String,
        /// The product line
        #[arg(long)]
        product_line: String,
        /// Quantity (whole units)
        #[arg(long)]
        qty: Option<i64>,
        /// Estimated amount, e.g. 250000.00 (two decimals at most)
        #[arg(long)]
        amount: Option<String>,
        /// Time frame (free text: "Q3", "next spring")
        #[arg(long)]
        timeframe: Option<String>,
        /// Print the visit as JSON
        #[arg(long)]
        json: bool,
    },
    /// Add a next-step task
    AddTask {
        /// The visit: id or id prefix
        #[arg(value_name = "VISIT")]
        id: String,
        /// What to do
        #[arg(long)]
        title: String,
        #[command(flatten)]
        fields: TaskFields,
        /// Print the visit as JSON
        #[arg(long)]
        json: bool,
    },
    /// Change a task's title, due date or assignee
    UpdateTask {
        /// The visit: id or id prefix
        #[arg(value_name = "VISIT")]
        id: String,
        /// The task: its id or id prefix (as `visit show` lists them), or its title
        #[arg(value_name = "TASK")]
        task: String,
        /// New title
        #[arg(long)]
        title: Option<String>,
        #[command(flatten)]
        fields: TaskFields,
        /// Print the visit as JSON
        #[arg(long)]
        json: bool,
    },
    /// Complete a task (for good; the first completion is kept)
    CompleteTask {
        /// The visit: id or id prefix
        #[arg(value_name = "VISIT")]
        id: String,
        /// The task: its id or id prefix (as `visit show` lists them), or its title
        #[arg(value_name = "TASK")]
        task: String,
        /// Print the visit as JSON
        #[arg(long)]
        json: bool,
    },
    /// Add a comment (a manager's remark; comments are kept, never edited)
    AddComment {
        /// The visit: id or id prefix
        #[arg(value_name = "VISIT")]
        id: String,
        /// The comment
        text: String,
        /// Print the visit as JSON
        #[arg(long)]
        json: bool,
    },
    /// Archive a visit (hidden from listings, never deleted)
    Archive(VisitIdArgs),
    /// Open tasks assigned to someone, soonest due first
    Tasks {
        /// Whose tasks [default: yours, the name this laptop edits under]
        #[arg(long)]
        assignee: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub(crate) struct VisitIdArgs {
    /// The visit: id or id prefix
    #[arg(value_name = "VISIT")]
    pub(crate) id: String,
    /// Print the visit as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

/// A task's fields besides its title.
#[derive(Args, Debug, Default)]
pub(crate) struct TaskFields {
    /// Due: 2026-12-08 or 2026-12-08T09:30, read as UTC
    #[arg(long, value_name = "DATE")]
    pub(crate) due: Option<String>,
    /// Who does it (a name as the laptops edit under)
    #[arg(long)]
    pub(crate) assignee: Option<String>,
}
