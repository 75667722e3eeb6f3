//! Upkeep and repair of a whole replica: projections rebuilt from the documents, every
//! document compacted, and a check that the file, the documents and the projections agree.

use rusqlite::OptionalExtension;

use super::Store;
use crate::ids::DocId;
use crate::model::{self, Document};
use crate::store::StoreError;
use crate::store::cache::load_cached;
use crate::store::projection::project;

impl Store {
    /// Rebuilds every projection row from the documents (the documents are the truth).
    pub fn rebuild_projections(&mut self) -> Result<usize, StoreError> {
        let ids: Vec<DocId> = self.all_heads()?.into_iter().map(|(id, _)| id).collect();
        self.transaction(|tx| {
            for table in [
                "customers",
                "customer_phones",
                "contacts",
                "equipment",
                "visits",
                "tasks",
                "quotes",
                "quote_lines",
                "conflicts",
            ] {
                tx.tx.execute(&format!("DELETE FROM {table}"), [])?;
            }
            for id in &ids {
                let doc = load_cached(&tx.tx, tx.cache, tx.actor, *id)?;
                project(&tx.tx, doc, true, true)?;
            }
            Ok(ids.len())
        })
    }

    /// Compacts every document that has incremental changes into a fresh snapshot.
    pub fn compact_all(&mut self) -> Result<usize, StoreError> {
        let ids: Vec<DocId> = {
            let mut st = self
                .conn
                .prepare("SELECT id FROM docs WHERE pending_changes > 0")?;
            st.query_map([], |r| r.get::<_, Vec<u8>>(0))?
                .filter_map(|r| r.ok().and_then(|b| DocId::from_slice(&b)))
                .collect()
        };
        self.transaction(|tx| {
            for id in &ids {
                tx.compact(*id)?;
            }
            Ok(ids.len())
        })
    }

    /// Checks the replica: SQLite's `integrity_check`, every stored document loads, and the
    /// projections agree with the documents. Returns the problems found (empty when healthy).
    pub fn verify(&mut self) -> Result<Vec<String>, StoreError> {
        let mut problems = Vec::new();
        let ic: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if ic != "ok" {
            problems.push(format!("integrity_check: {ic}"));
        }
        for (id, heads) in self.all_heads()? {
            self.cache.remove(&id);
            match load_cached(&self.conn, &mut self.cache, &self.actor, id) {
                Err(e) => problems.push(format!("{id}: does not load: {e}")),
                Ok(doc) => {
                    let mut h = doc.get_heads();
                    h.sort();
                    let mut stored = heads;
                    stored.sort();
                    if h != stored {
                        problems.push(format!("{id}: stored heads differ from the document's"));
                    }
                    if let Ok(Document::Customer(c)) = model::read_document(doc) {
                        let name: Option<String> = self
                            .conn
                            .query_row(
                                "SELECT name FROM customers WHERE id = ?1",
                                [id.to_string()],
                                |r| r.get(0),
                            )
                            .optional()?;
                        if name.as_deref() != Some(c.name.as_str()) {
                            problems
                                .push(format!("{id}: customer projection disagrees with document"));
                        }
                    }
                }
            }
        }
        Ok(problems)
    }
}
