//! Typed rows read from the replica's SQL projections, the filters that select them, and the
//! queries behind them.
//!
//! Projections are derived from the documents in the same transaction as every change (see
//! `fieldsync_core::store`), so these reads are always consistent with the documents.

use rusqlite::types::{Type, Value};
use rusqlite::{Connection, Row, params_from_iter};
use serde::{Deserialize, Serialize};

use fieldsync_core::model::{QuoteStatus, VisitStatus};
use fieldsync_core::{CustomerId, DocId, DocKind, Millis, QuoteId, VisitId};

/// One customer as listed from the `customers` projection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRow {
    /// The customer document.
    pub id: CustomerId,
    /// Name.
    pub name: String,
    /// Short name.
    pub short_name: Option<String>,
    /// Industry.
    pub industry: Option<String>,
    /// Lifecycle stage.
    pub stage: String,
    /// Main e-mail.
    pub email: Option<String>,
    /// Organisation.
    pub org: String,
    /// Territory.
    pub scope: String,
    /// Owner rep, if a manager assigned one.
    pub owner: Option<String>,
    /// Grade (computed centrally).
    pub grade: Option<String>,
    /// Who created the customer.
    pub created_by: String,
    /// When it was created (device time, ms).
    pub created_at: Millis,
    /// Archived (soft-deleted).
    pub archived: bool,
}

/// One visit as listed from the `visits` projection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitRow {
    /// The visit document.
    pub id: VisitId,
    /// The customer visited.
    pub customer_id: CustomerId,
    /// The customer's name, if the customer is in the replica.
    pub customer_name: Option<String>,
    /// Visit kind (`sales_call`, `return_visit`, `service_repair`, …).
    pub kind: String,
    /// Effective status.
    pub status: VisitStatus,
    /// Planned or actual time.
    pub at: Option<Millis>,
    /// Location.
    pub location: Option<String>,
    /// Notes.
    pub notes: String,
    /// Satisfaction 1–5.
    pub satisfaction: Option<i64>,
    /// Territory (the customer's).
    pub scope: String,
    /// Who logged the visit.
    pub created_by: String,
    /// When it was logged (device time, ms).
    pub created_at: Millis,
    /// Archived.
    pub archived: bool,
}

/// One quote as listed from the `quotes` projection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteRow {
    /// The quote document.
    pub id: QuoteId,
    /// The customer quoted.
    pub customer_id: CustomerId,
    /// The customer's name, if the customer is in the replica.
    pub customer_name: Option<String>,
    /// Quote number.
    pub quote_no: Option<String>,
    /// Effective status.
    pub status: QuoteStatus,
    /// Whether incomparable statuses were reached concurrently (see `conflicts`).
    pub status_conflict: bool,
    /// ISO 4217 currency.
    pub currency: String,
    /// Total of the active lines in minor units.
    pub total_minor: i64,
    /// Owner rep.
    pub owner: Option<String>,
    /// Territory.
    pub scope: String,
    /// Valid until.
    pub valid_until: Option<Millis>,
    /// When it was sent to the customer.
    pub sent_at: Option<Millis>,
    /// When to follow up.
    pub follow_up_due: Option<Millis>,
    /// The customer's response.
    pub customer_response: Option<String>,
    /// Who created the quote.
    pub created_by: String,
    /// When it was created (device time, ms).
    pub created_at: Millis,
    /// Archived.
    pub archived: bool,
}

/// One quote line with its quote's context, for price history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteLineRow {
    /// The quote.
    pub quote_id: QuoteId,
    /// The line's id inside the quote.
    pub line_id: String,
    /// The customer quoted.
    pub customer_id: CustomerId,
    /// The customer's name, if the customer is in the replica.
    pub customer_name: Option<String>,
    /// Quote number.
    pub quote_no: Option<String>,
    /// The quote's effective status.
    pub quote_status: QuoteStatus,
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
    /// Line total in minor units.
    pub total_minor: i64,
    /// Currency.
    pub currency: String,
    /// When the quote was created (device time, ms).
    pub created_at: Millis,
}

/// One next-step task from a visit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    /// The task's id inside the visit.
    pub task_id: String,
    /// The visit holding the task.
    pub visit_id: VisitId,
    /// The customer.
    pub customer_id: CustomerId,
    /// The customer's name, if the customer is in the replica.
    pub customer_name: Option<String>,
    /// Title.
    pub title: String,
    /// Due time.
    pub due: Option<Millis>,
    /// Assignee.
    pub assignee: Option<String>,
    /// Completion time, if done.
    pub done_at: Option<Millis>,
}

/// A customer no one has visited lately ([`Customers::not_visited_since`](crate::Customers::not_visited_since)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleCustomer {
    /// The customer.
    pub customer: CustomerRow,
    /// When its latest visit that took place was (its date, else when it was logged);
    /// `None` if it was never visited.
    pub last_visit_at: Option<Millis>,
}

/// One entry of a customer's timeline (visits and quotes by time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// When it happened: the visit time (or its creation time), the quote's creation time.
    pub occurred_at: Millis,
    /// Visit or quote.
    pub kind: DocKind,
    /// The visit or quote document.
    pub id: DocId,
    /// A one-line summary, e.g. `sales_call (done)` or `Q-7 submitted 120000 CNY`.
    pub summary: String,
}

/// Which customers [`Customers::list`](crate::Customers::list) returns. The default lists
/// every non-archived customer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerFilter {
    /// Only this territory.
    pub scope: Option<String>,
    /// Only this owner.
    pub owner: Option<String>,
    /// Only this lifecycle stage.
    pub stage: Option<String>,
    /// Only names (or short names) containing this text, case-insensitively for ASCII.
    pub search: Option<String>,
    /// Include archived customers.
    pub include_archived: bool,
    /// At most this many rows.
    pub limit: Option<u32>,
    /// Skip this many rows first.
    pub offset: u32,
}

impl CustomerFilter {
    /// Every non-archived customer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only customers in `scope`.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Only customers owned by `owner`.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Only customers in lifecycle stage `stage`.
    pub fn stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = Some(stage.into());
        self
    }

    /// Only customers whose name or short name contains `text`.
    pub fn search(mut self, text: impl Into<String>) -> Self {
        self.search = Some(text.into());
        self
    }

    /// Include archived customers.
    pub fn include_archived(mut self) -> Self {
        self.include_archived = true;
        self
    }

    /// One page: at most `limit` rows after skipping `offset`.
    pub fn page(mut self, limit: u32, offset: u32) -> Self {
        self.limit = Some(limit);
        self.offset = offset;
        self
    }
}

/// Which visits [`Visits::list`](crate::Visits::list) returns. The default lists every
/// non-archived visit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitFilter {
    /// Only visits to this customer.
    pub customer: Option<CustomerId>,
    /// Only visits logged by this author.
    pub author: Option<String>,
    /// Only visits with this effective status.
    pub status: Option<VisitStatus>,
    /// Include archived visits.
    pub include_archived: bool,
    /// At most this many rows.
    pub limit: Option<u32>,
    /// Skip this many rows first.
    pub offset: u32,
}

impl VisitFilter {
    /// Every non-archived visit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only visits to `customer`.
    pub fn customer(mut self, customer: CustomerId) -> Self {
        self.customer = Some(customer);
        self
    }

    /// Only visits logged by `author`.
    pub fn author(mut self, author: impl Into<String>) -> Self {
        self.author = Some(author.into());
        self
    }

    /// Only visits with effective status `status`.
    pub fn status(mut self, status: VisitStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Include archived visits.
    pub fn include_archived(mut self) -> Self {
        self.include_archived = true;
        self
    }

    /// One page: at most `limit` rows after skipping `offset`.
    pub fn page(mut self, limit: u32, offset: u32) -> Self {
        self.limit = Some(limit);
        self.offset = offset;
        self
    }
}

/// Which quotes [`Quotes::list`](crate::Quotes::list) returns. The default lists every
/// non-archived quote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteFilter {
    /// Only quotes to this customer.
    pub customer: Option<CustomerId>,
    /// Only quotes with this effective status.
    pub status: Option<QuoteStatus>,
    /// Only quotes owned by this rep.
    pub owner: Option<String>,
    /// Include archived quotes.
    pub include_archived: bool,
    /// At most this many rows.
    pub limit: Option<u32>,
    /// Skip this many rows first.
    pub offset: u32,
}

impl QuoteFilter {
    /// Every non-archived quote.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only quotes to `customer`.
    pub fn customer(mut self, customer: CustomerId) -> Self {
        self.customer = Some(customer);
        self
    }

    /// Only quotes with effective status `status`.
    pub fn status(mut self, status: QuoteStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only quotes owned by `owner`.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Include archived quotes.
    pub fn include_archived(mut self) -> Self {
        self.include_archived = true;
        self
    }

    /// One page: at most `limit` rows after skipping `offset`.
    pub fn page(mut self, limit: u32, offset: u32) -> Self {
        self.limit = Some(limit);
        self.offset = offset;
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Row decoding

fn bad_column(idx: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, msg.into())
}

fn col_id(row: &Row<'_>, idx: usize) -> rusqlite::Result<DocId> {
    let s: String = row.get(idx)?;
    s.parse()
        .map_err(|e| bad_column(idx, format!("`{s}` is not a document id: {e}")))
}

fn col_quote_status(row: &Row<'_>, idx: usize) -> rusqlite::Result<QuoteStatus> {
    let s: String = row.get(idx)?;
    QuoteStatus::parse(&s).ok_or_else(|| bad_column(idx, format!("unknown quote status `{s}`")))
}

fn col_visit_status(row: &Row<'_>, idx: usize) -> rusqlite::Result<VisitStatus> {
    let s: String = row.get(idx)?;
    VisitStatus::parse(&s).ok_or_else(|| bad_column(idx, format!("unknown visit status `{s}`")))
}

const CUSTOMER_COLS: &str = "c.id, c.name, c.short_name, c.industry, c.stage, c.email, c.org, \
     c.scope, c.owner, c.grade, c.created_by, c.created_at, c.archived";

fn customer_row(r: &Row<'_>) -> rusqlite::Result<CustomerRow> {
    Ok(CustomerRow {
        id: col_id(r, 0)?.into(),
        name: r.get(1)?,
        short_name: r.get(2)?,
        industry: r.get(3)?,
        stage: r.get(4)?,
        email: r.get(5)?,
        org: r.get(6)?,
        scope: r.get(7)?,
        owner: r.get(8)?,
        grade: r.get(9)?,
        created_by: r.get(10)?,
        created_at: r.get(11)?,
        archived: r.get(12)?,
    })
}

const VISIT_COLS: &str = "v.id, v.customer_id, c.name, v.kind, v.status, v.at, v.location, \
     v.notes, v.satisfaction, v.scope, v.created_by, v.created_at, v.archived";

fn visit_row(r: &Row<'_>) -> rusqlite::Result<VisitRow> {
    Ok(VisitRow {
        id: col_id(r, 0)?.into(),
        customer_id: col_id(r, 1)?.into(),
        customer_name: r.get(2)?,
        kind: r.get(3)?,
        status: col_visit_status(r, 4)?,
        at: r.get(5)?,
        location: r.get(6)?,
        notes: r.get(7)?,
        satisfaction: r.get(8)?,
        scope: r.get(9)?,
        created_by: r.get(10)?,
        created_at: r.get(11)?,
        archived: r.get(12)?,
    })
}

const QUOTE_COLS: &str = "q.id, q.customer_id, c.name, q.quote_no, q.status, \
     q.status_conflict, q.currency, q.total_minor, q.owner, q.scope, q.valid_until, q.sent_at, \
     q.follow_up_due, q.customer_response, q.created_by, q.created_at, q.archived";

fn quote_row(r: &Row<'_>) -> rusqlite::Result<QuoteRow> {
    Ok(QuoteRow {
        id: col_id(r, 0)?.into(),
        customer_id: col_id(r, 1)?.into(),
        customer_name: r.get(2)?,
        quote_no: r.get(3)?,
        status: col_quote_status(r, 4)?,
        status_conflict: r.get(5)?,
        currency: r.get(6)?,
        total_minor: r.get(7)?,
        owner: r.get(8)?,
        scope: r.get(9)?,
        valid_until: r.get(10)?,
        sent_at: r.get(11)?,
        follow_up_due: r.get(12)?,
        customer_response: r.get(13)?,
        created_by: r.get(14)?,
        created_at: r.get(15)?,
        archived: r.get(16)?,
    })
}

fn limit_offset(sql: &mut String, args: &mut Vec<Value>, limit: Option<u32>, offset: u32) {
    sql.push_str(" LIMIT ? OFFSET ?");
    args.push(Value::Integer(limit.map_or(-1, i64::from)));
    args.push(Value::Integer(i64::from(offset)));
}

fn collect<T>(
    conn: &Connection,
    sql: &str,
    args: Vec<Value>,
    f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut st = conn.prepare_cached(sql)?;
    let rows = st.query_map(params_from_iter(args), f)?;
    rows.collect()
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Queries

pub(crate) fn list_customers(
    conn: &Connection,
    f: &CustomerFilter,
) -> rusqlite::Result<Vec<CustomerRow>> {
    let mut sql = format!("SELECT {CUSTOMER_COLS} FROM customers c WHERE 1 = 1");
    let mut args = Vec::new();
    if !f.include_archived {
        sql.push_str(" AND c.archived = 0");
    }
    for (col, v) in [
        ("scope", &f.scope),
        ("owner", &f.owner),
        ("stage", &f.stage),
    ] {
        if let Some(v) = v {
            sql.push_str(&format!(" AND c.{col} = ?"));
            args.push(Value::Text(v.clone()));
        }
    }
    if let Some(text) = &f.search {
        sql.push_str(" AND (c.name LIKE ? ESCAPE '\\' OR c.short_name LIKE ? ESCAPE '\\')");
        let pattern = format!("%{}%", escape_like(text));
        args.push(Value::Text(pattern.clone()));
        args.push(Value::Text(pattern));
    }
    sql.push_str(" ORDER BY c.name COLLATE NOCASE, c.id");
    limit_offset(&mut sql, &mut args, f.limit, f.offset);
    collect(conn, &sql, args, customer_row)
}

/// Shortest number (in digits) that may match stored numbers by their ending.
pub(crate) const MIN_SUFFIX_DIGITS: usize = 7;

pub(crate) fn customers_by_phone(
    conn: &Connection,
    normalized: &str,
) -> rusqlite::Result<Vec<CustomerRow>> {
    let exact = format!(
        "SELECT {CUSTOMER_COLS} FROM customers c
          WHERE c.id IN (SELECT customer_id FROM customer_phones WHERE normalized = ?1)
          ORDER BY c.name COLLATE NOCASE, c.id"
    );
    let rows = collect(
        conn,
        &exact,
        vec![Value::Text(normalized.to_string())],
        customer_row,
    )?;
    // A number typed without its country code (`138 0000 0002`) finds numbers stored with
    // one (`+86 138 0000 0002`). Normalised numbers hold only digits and `+`, so the LIKE
    // pattern needs no escaping. This scans the phone table, so it runs only on a miss.
    if !rows.is_empty() || normalized.starts_with('+') || normalized.len() < MIN_SUFFIX_DIGITS {
        return Ok(rows);
    }
    let suffix = format!(
        "SELECT {CUSTOMER_COLS} FROM customers c
          WHERE c.id IN (SELECT customer_id FROM customer_phones WHERE normalized LIKE ?1)
          ORDER BY c.name COLLATE NOCASE, c.id"
    );
    collect(
        conn,
        &suffix,
        vec![Value::Text(format!("%{normalized}"))],
        customer_row,
    )
}

pub(crate) fn timeline(
    conn: &Connection,
    customer: CustomerId,
) -> rusqlite::Result<Vec<TimelineEntry>> {
    let sql = "SELECT t.occurred_at, t.kind, t.id, t.summary FROM timeline t
                WHERE t.customer_id = ?1
                  AND NOT EXISTS (SELECT 1 FROM visits v WHERE v.id = t.id AND v.archived)
                  AND NOT EXISTS (SELECT 1 FROM quotes q WHERE q.id = t.id AND q.archived)
                ORDER BY t.occurred_at DESC, t.id DESC";
    collect(conn, sql, vec![Value::Text(customer.to_string())], |r| {
        let kind: String = r.get(1)?;
        Ok(TimelineEntry {
            occurred_at: r.get(0)?,
            kind: DocKind::parse(&kind)
                .ok_or_else(|| bad_column(1, format!("unknown timeline kind `{kind}`")))?,
            id: col_id(r, 2)?,
            summary: r.get(3)?,
        })
    })
}

pub(crate) fn list_visits(conn: &Connection, f: &VisitFilter) -> rusqlite::Result<Vec<VisitRow>> {
    let mut sql = format!(
        "SELECT {VISIT_COLS} FROM visits v LEFT JOIN customers c ON c.id = v.customer_id
          WHERE 1 = 1"
    );
    let mut args = Vec::new();
    if !f.include_archived {
        sql.push_str(" AND v.archived = 0");
    }
    if let Some(c) = f.customer {
        sql.push_str(" AND v.customer_id = ?");
        args.push(Value::Text(c.to_string()));
    }
    if let Some(a) = &f.author {
        sql.push_str(" AND v.created_by = ?");
        args.push(Value::Text(a.clone()));
    }
    if let Some(s) = f.status {
        sql.push_str(" AND v.status = ?");
        args.push(Value::Text(s.as_str().to_string()));
    }
    sql.push_str(" ORDER BY COALESCE(v.at, v.created_at) DESC, v.id DESC");
    limit_offset(&mut sql, &mut args, f.limit, f.offset);
    collect(conn, &sql, args, visit_row)
}

/// Live customers with no visit done at or after `cutoff` (ms), the longest unvisited first
/// (never visited before any visited; a customer created after `cutoff` is not overdue yet),
/// with when each was last visited.
pub(crate) fn not_visited_since(
    conn: &Connection,
    cutoff: Millis,
    limit: u32,
) -> rusqlite::Result<Vec<IdleCustomer>> {
    let sql = format!(
        "SELECT {CUSTOMER_COLS}, last.at FROM customers c
           LEFT JOIN (SELECT customer_id, MAX(COALESCE(at, created_at)) AS at FROM visits
                       WHERE status = 'done' AND archived = 0 GROUP BY customer_id) last
             ON last.customer_id = c.id
          WHERE c.archived = 0
            AND (last.at < ?1 OR (last.at IS NULL AND c.created_at < ?1))
          ORDER BY last.at IS NOT NULL, last.at, c.name
          LIMIT ?2"
    );
    collect(
        conn,
        &sql,
        vec![Value::Integer(cutoff), Value::Integer(i64::from(limit))],
        |r| {
            Ok(IdleCustomer {
                customer: customer_row(r)?,
                last_visit_at: r.get(13)?,
            })
        },
    )
}

/// Whose open tasks [`open_tasks`] lists.
pub(crate) enum TasksOf<'a> {
    /// Assigned to this author, or unassigned on a visit they logged.
    Assignee(&'a str),
    /// On any live visit to this customer, whoever they are assigned to.
    Customer(CustomerId),
}

pub(crate) fn open_tasks(conn: &Connection, of: TasksOf<'_>) -> rusqlite::Result<Vec<TaskRow>> {
    let (filter, arg) = match of {
        TasksOf::Assignee(a) => (
            "(t.assignee = ?1 OR (COALESCE(t.assignee, '') = '' AND v.created_by = ?1))",
            a.to_string(),
        ),
        TasksOf::Customer(c) => ("t.customer_id = ?1", c.to_string()),
    };
    let sql = format!(
        "SELECT t.id, t.visit_id, t.customer_id, c.name, t.title, t.due, t.assignee, t.done_at
           FROM tasks t
           JOIN visits v ON v.id = t.visit_id
           LEFT JOIN customers c ON c.id = t.customer_id
          WHERE {filter} AND t.done_at IS NULL AND v.archived = 0
          ORDER BY t.due IS NULL, t.due, t.visit_id, t.id"
    );
    collect(conn, &sql, vec![Value::Text(arg)], |r| {
        Ok(TaskRow {
            task_id: r.get(0)?,
            visit_id: col_id(r, 1)?.into(),
            customer_id: col_id(r, 2)?.into(),
            customer_name: r.get(3)?,
            title: r.get(4)?,
            due: r.get(5)?,
            assignee: r.get(6)?,
            done_at: r.get(7)?,
        })
    })
}

pub(crate) fn list_quotes(conn: &Connection, f: &QuoteFilter) -> rusqlite::Result<Vec<QuoteRow>> {
    let mut sql = format!(
        "SELECT {QUOTE_COLS} FROM quotes q LEFT JOIN customers c ON c.id = q.customer_id
          WHERE 1 = 1"
    );
    let mut args = Vec::new();
    if !f.include_archived {
        sql.push_str(" AND q.archived = 0");
    }
    if let Some(c) = f.customer {
        sql.push_str(" AND q.customer_id = ?");
        args.push(Value::Text(c.to_string()));
    }
    if let Some(s) = f.status {
        sql.push_str(" AND q.status = ?");
        args.push(Value::Text(s.as_str().to_string()));
    }
    if let Some(o) = &f.owner {
        sql.push_str(" AND q.owner = ?");
        args.push(Value::Text(o.clone()));
    }
    sql.push_str(" ORDER BY q.created_at DESC, q.id DESC");
    limit_offset(&mut sql, &mut args, f.limit, f.offset);
    collect(conn, &sql, args, quote_row)
}

pub(crate) fn quotes_due(conn: &Connection, at: Millis) -> rusqlite::Result<Vec<QuoteRow>> {
    let sql = format!(
        "SELECT {QUOTE_COLS} FROM quotes q LEFT JOIN customers c ON c.id = q.customer_id
          WHERE q.status = 'sent' AND q.follow_up_due <= ?1 AND q.archived = 0
          ORDER BY q.follow_up_due, q.id"
    );
    collect(conn, &sql, vec![Value::Integer(at)], quote_row)
}

/// Which quote lines a price history lists.
pub(crate) enum LinesOf<'a> {
    /// Every customer's lines of one SKU.
    Sku(&'a str),
    /// One customer's lines of every SKU.
    Customer(CustomerId),
}

pub(crate) fn price_history(
    conn: &Connection,
    of: LinesOf<'_>,
) -> rusqlite::Result<Vec<QuoteLineRow>> {
    let (filter, arg) = match of {
        LinesOf::Sku(sku) => ("l.sku = ?1", sku.to_string()),
        LinesOf::Customer(c) => ("l.customer_id = ?1", c.to_string()),
    };
    let sql = format!(
        "SELECT l.quote_id, l.line_id, l.customer_id, c.name, q.quote_no, q.status, l.sku,
                l.description, l.qty, l.unit_price_minor, l.discount_bp, l.total_minor,
                l.currency, l.created_at
           FROM quote_lines l
           JOIN quotes q ON q.id = l.quote_id
           LEFT JOIN customers c ON c.id = l.customer_id
          WHERE {filter} AND l.archived = 0 AND q.archived = 0
          ORDER BY l.sku, l.created_at DESC, l.quote_id, l.line_id"
    );
    collect(conn, &sql, vec![Value::Text(arg)], |r| {
        Ok(QuoteLineRow {
            quote_id: col_id(r, 0)?.into(),
            line_id: r.get(1)?,
            customer_id: col_id(r, 2)?.into(),
            customer_name: r.get(3)?,
            quote_no: r.get(4)?,
            quote_status: col_quote_status(r, 5)?,
            sku: r.get(6)?,
            description: r.get(7)?,
            qty: r.get(8)?,
            unit_price_minor: r.get(9)?,
            discount_bp: r.get(10)?,
            total_minor: r.get(11)?,
            currency: r.get(12)?,
            created_at: r.get(13)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::escape_like;

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(escape_like("50%_a\\b"), "50\\%\\_a\\\\b");
        assert_eq!(escape_like("plain"), "plain");
    }
}
