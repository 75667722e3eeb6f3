//! The two views a rep starts from, put together from the typed queries: [`Today`] (what is
//! due now) and [`Briefing`] (everything about one customer the night before a visit: the
//! Customer 360). The rep's app, the CLI (`fieldsync today`, `fieldsync customer brief`) and
//! any embedding app read the same structures.

use serde::{Deserialize, Serialize};

use crate::{
    ChangedDoc, ChangedSinceSync, Client, ClientError, Customer, CustomerId, CustomerRow, DocId,
    DocKind, IdleCustomer, Millis, QuoteLineRow, QuoteRow, TaskRow, TimelineEntry, VisitFilter,
    VisitRow, VisitStatus,
};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Visit kinds that are care calls: greetings on holidays and birthdays, relationship visits.
pub const CARE_KINDS: &[&str] = &["care", "greeting", "care_greeting"];

/// How far ahead [`Today`] lists planned greetings.
pub const GREETINGS_AHEAD_DAYS: i64 = 14;

/// What is due now ([`Client::today`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Today {
    /// When this was put together (ms since the Unix epoch).
    pub now: Millis,
    /// Planned visits (not care calls), soonest first, undated last.
    pub planned_visits: Vec<VisitRow>,
    /// Quotes whose follow-up is due, most overdue first.
    pub follow_ups_due: Vec<QuoteRow>,
    /// Open tasks assigned to this replica's author, soonest due first.
    pub open_tasks: Vec<TaskRow>,
    /// Planned care visits ([`CARE_KINDS`]) in the next [`GREETINGS_AHEAD_DAYS`] days (and
    /// undated ones).
    pub greetings: Vec<VisitRow>,
    /// Customers with no visit done in the last `idle_days`, longest unvisited first.
    pub not_visited: Vec<NotVisited>,
}

/// A customer no one visited lately, in [`Today`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotVisited {
    /// The customer.
    pub customer: CustomerRow,
    /// Its latest visit that took place; `None` if never visited.
    pub last_visit_at: Option<Millis>,
    /// Whole days since then; `None` if never visited.
    pub days: Option<i64>,
}

/// Everything about one customer for a visit ([`Client::briefing`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Briefing {
    /// The customer: contacts, equipment, addresses, notes, …
    pub customer: Customer,
    /// Its visits, newest first.
    pub visits: Vec<VisitRow>,
    /// Its quotes, newest first.
    pub quotes: Vec<QuoteRow>,
    /// Open tasks of its visits, whoever they are assigned to, soonest due first.
    pub open_tasks: Vec<TaskRow>,
    /// Every line quoted to it, by SKU, newest first (price protection).
    pub price_history: Vec<QuoteLineRow>,
    /// Visits and quotes by time, newest first.
    pub timeline: Vec<TimelineEntry>,
    /// What changed since the last sync.
    pub changed: Changed,
}

/// What changed around a customer since the last sync, with titles for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    /// When the latest connection to the relay that brought something began.
    pub since: Option<Millis>,
    /// Documents others changed since then.
    pub received: Vec<ChangedItem>,
    /// Documents with local edits the relay has not acknowledged yet.
    pub waiting: Vec<ChangedItem>,
}

/// One document in [`Changed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedItem {
    /// The document.
    pub id: DocId,
    /// Its kind.
    pub kind: DocKind,
    /// The customer's name, a visit's kind and first words, a quote's number.
    pub title: String,
    /// When it arrived, or when its latest waiting edit was made.
    pub at: Millis,
}

impl Client {
    /// What is due now: see [`Today`]. `idle_days`: how long without a visit makes a
    /// customer "not visited".
    pub fn today(&self, idle_days: u32) -> Result<Today, ClientError> {
        let now = fieldsync_core::ids::now_millis();
        let idle = i64::from(idle_days.min(36_500));
        let me = self.identity()?.author;
        let mut planned = self
            .visits()
            .list(&VisitFilter::new().status(VisitStatus::Planned))?;
        planned.sort_by_key(|v| (v.at.is_none(), v.at));
        let (greetings, planned_visits): (Vec<VisitRow>, Vec<VisitRow>) = planned
            .into_iter()
            .partition(|v| CARE_KINDS.contains(&v.kind.as_str()));
        let greetings = greetings
            .into_iter()
            .filter(|v| {
                v.at.is_none_or(|at| at <= now + GREETINGS_AHEAD_DAYS * DAY_MS)
            })
            .collect();
        let not_visited = self
            .customers()
            .not_visited_since(now - idle * DAY_MS, 200)?
            .into_iter()
            .map(
                |IdleCustomer {
                     customer,
                     last_visit_at,
                 }| NotVisited {
                    days: last_visit_at.map(|at| (now - at).max(0) / DAY_MS),
                    customer,
                    last_visit_at,
                },
            )
            .collect();
        Ok(Today {
            now,
            planned_visits,
            follow_ups_due: self.quotes().due_for_follow_up(now)?,
            open_tasks: self.visits().open_tasks(&me)?,
            greetings,
            not_visited,
        })
    }

    /// Everything about `id` for a visit: see [`Briefing`].
    pub fn briefing(&self, id: CustomerId) -> Result<Briefing, ClientError> {
        let customer = self.customers().get(id)?;
        let visits = self.visits().for_customer(id)?;
        let quotes = self.quotes().history(id)?;
        let open_tasks = self.visits().open_tasks_of(id)?;
        let ChangedSinceSync {
            since,
            received,
            waiting,
        } = self.changed_since_sync(id)?;
        let title = |doc: DocId, kind: DocKind| -> String {
            if doc == DocId::from(id) {
                return customer.name.clone();
            }
            match kind {
                DocKind::Visit => visits.iter().find(|v| DocId::from(v.id) == doc).map(|v| {
                    format!("{} {}", v.kind, first_words(&v.notes))
                        .trim()
                        .to_string()
                }),
                DocKind::Quote => quotes
                    .iter()
                    .find(|q| DocId::from(q.id) == doc)
                    .and_then(|q| q.quote_no.clone()),
                _ => None,
            }
            .unwrap_or_else(|| doc.to_string().chars().take(8).collect())
        };
        let item = |d: ChangedDoc| ChangedItem {
            title: title(d.id, d.kind),
            id: d.id,
            kind: d.kind,
            at: d.at,
        };
        let changed = Changed {
            since,
            received: received.into_iter().map(item).collect(),
            waiting: waiting.into_iter().map(item).collect(),
        };
        Ok(Briefing {
            price_history: self.quotes().customer_prices(id)?,
            timeline: self.customers().timeline(id)?,
            customer,
            visits,
            quotes,
            open_tasks,
            changed,
        })
    }
}

/// The first line of `s`, at most 60 characters.
fn first_words(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(60) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}
