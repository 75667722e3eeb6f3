//! A document whose history the relay replaced (IT trimmed it, see
//! [`crate::model::rewrite`]): the replica takes the new history in place of its own and
//! carries over the edits the relay has not acknowledged.
//!
//! The old history's unacknowledged changes can never be stored on the relay any more (their
//! dependencies are gone), so they leave the outbox; what they did is written again on the new
//! history as one new local change, which is uploaded and judged like any other. Edits that
//! cannot be placed keep their original changes, in the quarantine, with the reason: nothing a
//! rep typed is thrown away.

use automerge::{AutoCommit, ChangeHash};
use rusqlite::params;

use super::cache::load_cached;
use super::decode::heads_to_bytes;
use super::local_budget::check_local_change;
use super::projection::project;
use super::{DocEvent, Origin, PreparedSnapshot, StoreError, StoreTx};
use crate::DocId;
use crate::model::rewrite::reapply;

/// What replacing a document did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replaced {
    /// Unacknowledged local changes whose edits were carried over to the new history.
    pub carried: usize,
    /// Local changes moved to the quarantine because their edits could not all be placed.
    pub quarantined: usize,
}

impl StoreTx<'_> {
    /// Replaces document `id` with a new history the relay sent in place of the old one
    /// (`bytes`, prepared by [`super::prepare_snapshot`]), re-applying this replica's
    /// unacknowledged edits on top. A document the replica does not hold is simply stored.
    pub fn replace_document(
        &mut self,
        id: DocId,
        bytes: &[u8],
        prepared: &mut PreparedSnapshot,
    ) -> Result<Replaced, StoreError> {
        let exists = self.exists(id)?;
        if !exists {
            self.cache.remove(&id);
            self.apply_prepared_snapshot(id, bytes, prepared)?;
            return Ok(Replaced::default());
        }
        let Some(mut new) = prepared.doc.take() else {
            return Err(StoreError::InvalidData(format!(
                "replacement of {id} was already applied"
            )));
        };
        let pending: Vec<(ChangeHash, Vec<u8>)> = self
            .tx
            .prepare_cached("SELECT hash, bytes FROM outbox WHERE doc_id = ?1 ORDER BY seq")?
            .query_map([id.as_bytes()], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter_map(|(h, b)| ChangeHash::try_from(h.as_slice()).ok().map(|h| (h, b)))
            .collect();
        let mut done = Replaced::default();
        if !pending.is_empty() {
            let hashes: Vec<ChangeHash> = pending.iter().map(|(h, _)| *h).collect();
            new.set_actor(self.actor.clone());
            let before = new.get_heads();
            // The old copy may itself be what could not load (the reason for the trim):
            // then nothing can be read from it, and its edits wait in the quarantine.
            let carried = match load_cached(&self.tx, self.cache, self.actor, id) {
                Ok(old) => reapply(old, &hashes, &mut new).map_err(|e| e.to_string()),
                Err(e) => Err(format!("the old copy could not be read ({e})")),
            };
            match carried {
                Ok(r) if r.unplaced.is_empty() => {
                    new.commit();
                    done.carried = pending.len();
                }
                Ok(r) => {
                    new.rollback();
                    let reason = format!(
                        "the relay replaced this document's history (trimmed by IT); these edits \
                         could not all be carried over: {}",
                        r.unplaced.join("; ")
                    );
                    done.quarantined = self.quarantine_all(&hashes, &reason)?;
                }
                Err(why) => {
                    let reason = format!(
                        "the relay replaced this document's history (trimmed by IT); {why}"
                    );
                    done.quarantined = self.quarantine_all(&hashes, &reason)?;
                }
            }
            if done.carried > 0 {
                self.queue_new_changes(id, &mut new, &before)?;
                let mut del = self
                    .tx
                    .prepare_cached("DELETE FROM outbox WHERE hash = ?1")?;
                for h in &hashes {
                    del.execute([h.0])?;
                }
            }
        }
        self.cache.remove(&id);
        let snapshot = if done.carried > 0 {
            new.save()
        } else {
            bytes.to_vec()
        };
        self.tx
            .execute("DELETE FROM doc_changes WHERE doc_id = ?1", [id.as_bytes()])?;
        let typed = project(&self.tx, &new, false, done.carried > 0)?;
        self.tx
            .prepare_cached(
                "UPDATE docs SET snapshot = ?2, heads = ?3, pending_changes = 0, updated_at = ?4,
                   received_at = ?4,
                   kind = COALESCE(?5, kind), scope = COALESCE(?6, scope),
                   customer_id = COALESCE(?7, customer_id)
                 WHERE id = ?1",
            )?
            .execute(params![
                id.as_bytes(),
                snapshot,
                heads_to_bytes(&new.get_heads()),
                self.opts.env.now_millis(),
                typed.as_ref().map(|d| d.header().kind.code()),
                typed.as_ref().map(|d| d.header().scope.clone()),
                typed
                    .as_ref()
                    .and_then(|d| d.customer_id())
                    .map(|c| c.as_bytes().to_vec()),
            ])?;
        // Later local edits are this replica's, like every cached document's.
        new.set_actor(self.actor.clone());
        self.cache.insert(id, new);
        self.events.push(DocEvent {
            id,
            kind: typed.as_ref().map(|d| d.header().kind),
            origin: Origin::Remote,
            evicted: false,
        });
        Ok(done)
    }

    /// Queues the changes `doc` gained since `before` in the outbox, within the budgets the
    /// relay checks.
    fn queue_new_changes(
        &mut self,
        id: DocId,
        doc: &mut AutoCommit,
        before: &[ChangeHash],
    ) -> Result<(), StoreError> {
        let now = self.opts.env.now_millis();
        let mut ins = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO outbox (doc_id, hash, bytes, created_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for c in doc.get_changes(before) {
            check_local_change(&c)?;
            ins.execute(params![id.as_bytes(), c.hash().0, c.raw_bytes(), now])?;
        }
        Ok(())
    }

    fn quarantine_all(&mut self, hashes: &[ChangeHash], reason: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for h in hashes {
            n += usize::from(self.quarantine(h, reason)?);
        }
        Ok(n)
    }
}
