//! Which customers the replica needs first when it downloads: those the rep visits in the next
//! days and those with recent work on this laptop. A session names them to the relay
//! ([`crate::protocol::Message::First`]) so their documents, visits and quotes come ahead of
//! the rest of a long download.

use rusqlite::params;

use super::Store;
use crate::ids::{DocId, Millis};
use crate::store::StoreError;

/// How far ahead a planned visit makes its customer urgent.
const FIRST_VISITS_AHEAD: Millis = 7 * 24 * 3_600_000;

/// How long a planned visit stays urgent after its time (it may not be logged as done yet).
const FIRST_VISITS_BEHIND: Millis = 24 * 3_600_000;

/// How recent a visit must be to make its customer urgent.
const FIRST_RECENT_WORK: Millis = 7 * 24 * 3_600_000;

impl Store {
    /// Up to `limit` customers whose documents a download should bring first, most urgent
    /// first: those with visits planned from a day before `now` to a week after it (soonest
    /// first), then those of documents with local changes the relay has not acknowledged,
    /// then those visited in the last week (latest first). What merely arrived from the relay
    /// recently does not count: after a long download that would be every customer.
    pub fn first_customers(&self, now: Millis, limit: usize) -> Result<Vec<DocId>, StoreError> {
        let mut out: Vec<DocId> = Vec::new();
        let push = |id: DocId, out: &mut Vec<DocId>| {
            if out.len() < limit && !out.contains(&id) {
                out.push(id);
            }
        };
        let mut st = self.conn.prepare_cached(
            "SELECT customer_id FROM visits
              WHERE status = 'planned' AND archived = 0 AND at BETWEEN ?1 AND ?2
              ORDER BY at LIMIT ?3",
        )?;
        let planned = st.query_map(
            params![
                now.saturating_sub(FIRST_VISITS_BEHIND),
                now.saturating_add(FIRST_VISITS_AHEAD),
                limit as i64
            ],
            |r| r.get::<_, String>(0),
        )?;
        for c in planned {
            if let Ok(id) = c?.parse::<DocId>() {
                push(id, &mut out);
            }
        }
        // Unsent local work: a customer document is its own customer, visits and quotes name
        // theirs.
        let mut st = self.conn.prepare_cached(
            "SELECT COALESCE(d.customer_id, d.id) FROM docs d
              WHERE d.kind IS NOT NULL AND d.id IN (SELECT doc_id FROM outbox)
              ORDER BY d.updated_at DESC LIMIT ?1",
        )?;
        let pending = st.query_map(params![(limit * 4) as i64], |r| r.get::<_, Vec<u8>>(0))?;
        for c in pending {
            if let Some(id) = DocId::from_slice(&c?) {
                push(id, &mut out);
            }
        }
        // Visits of the last week (the follow-ups are due now).
        let mut st = self.conn.prepare_cached(
            "SELECT customer_id FROM visits
              WHERE status = 'done' AND archived = 0 AND at BETWEEN ?1 AND ?2
              ORDER BY at DESC LIMIT ?3",
        )?;
        let recent = st.query_map(
            params![now.saturating_sub(FIRST_RECENT_WORK), now, limit as i64],
            |r| r.get::<_, String>(0),
        )?;
        for c in recent {
            if let Ok(id) = c?.parse::<DocId>() {
                push(id, &mut out);
            }
        }
        Ok(out)
    }
}
