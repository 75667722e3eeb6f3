//! What changed around one customer since the last sync, for a pre-visit briefing: the
//! documents (the customer, its visits and quotes) that received changes from elsewhere since
//! the last sync that brought anything began, and those holding local edits the relay has not
//! acknowledged yet.
//!
//! The replica records when each document last received changes from elsewhere
//! (`docs.received_at`) and when the latest connection that brought something began
//! ([`sync::SESSION_META_KEY`](crate::sync::SESSION_META_KEY)).

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::{Client, ClientError, CustomerId, DocId, DocKind, Millis};

/// One document in a [`ChangedSinceSync`] list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedDoc {
    /// The document.
    pub id: DocId,
    /// Its kind.
    pub kind: DocKind,
    /// When it arrived (received) or when its latest unacknowledged edit was made (waiting).
    pub at: Millis,
}

/// What changed around a customer since the last sync ([`Client::changed_since_sync`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedSinceSync {
    /// When the latest connection to the relay that brought something began; `None` if none
    /// ever did.
    pub since: Option<Millis>,
    /// Documents that received changes from elsewhere since then (others' edits through the
    /// relay, an import), newest first.
    pub received: Vec<ChangedDoc>,
    /// Documents with local edits the relay has not acknowledged yet, newest first.
    pub waiting: Vec<ChangedDoc>,
}

impl Client {
    /// What changed around `customer` (the customer and its visits and quotes) since the
    /// last sync: see [`ChangedSinceSync`].
    pub fn changed_since_sync(
        &self,
        customer: CustomerId,
    ) -> Result<ChangedSinceSync, ClientError> {
        let since = crate::sync::session_started_at(self)?;
        self.with_store(|store| {
            let conn = store.reader();
            let rows = |sql: &str, at: Option<Millis>| -> Result<Vec<ChangedDoc>, ClientError> {
                let mut st = conn.prepare(sql)?;
                let mut out = Vec::new();
                let mut rows = st.query(params![&customer.as_bytes()[..], at])?;
                while let Some(r) = rows.next()? {
                    let id: Vec<u8> = r.get(0)?;
                    let kind: Option<i64> = r.get(1)?;
                    let (Some(id), Some(kind)) = (DocId::from_slice(&id), kind.and_then(DocKind::from_code))
                    else {
                        continue;
                    };
                    out.push(ChangedDoc { id, kind, at: r.get(2)? });
                }
                Ok(out)
            };
            let received = match since {
                Some(since) => rows(
                    "SELECT id, kind, received_at FROM docs
                     WHERE (id = ?1 OR customer_id = ?1) AND received_at >= ?2
                     ORDER BY received_at DESC",
                    Some(since),
                )?,
                None => Vec::new(),
            };
            let waiting = rows(
                "SELECT d.id, d.kind, MAX(o.created_at) AS at FROM outbox o JOIN docs d ON d.id = o.doc_id
                 WHERE (d.id = ?1 OR d.customer_id = ?1) AND ?2 IS NULL
                 GROUP BY d.id ORDER BY at DESC",
                None,
            )?;
            Ok(ChangedSinceSync { since, received, waiting })
        })
    }
}
