//! A PostgreSQL connection that prepares each statement once.
//!
//! `postgres::Client::query` with SQL text prepares an unnamed statement first: one round trip
//! to parse and plan it, then another to run it. The relay runs the same few dozen statements
//! all day (an upload is about a dozen, all under the log counter's row lock, which every
//! node's appends wait for), so each connection ([`PgConn`]) keeps the statements it has
//! prepared, keyed by their text, and runs them with one round trip. The store's SQL has a
//! fixed set of texts (no values are formatted into it), so the map stays small.
//!
//! [`PgTxn`] is a transaction on such a connection, using the same statements; [`Run`] is
//! what both offer, for helpers that run inside or outside a transaction.

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, IsolationLevel, Row, Statement, Transaction};

/// Statements are kept up to this many per connection; past it (which the store's SQL does
/// not reach) the map starts again, so no input can grow it without bound.
const MAX_STATEMENTS: usize = 256;

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Statements prepared on one connection, by their SQL text.
#[derive(Default)]
pub(super) struct Prepared(HashMap<String, Statement>);

impl Prepared {
    fn get(
        &mut self,
        sql: &str,
        prepare: impl FnOnce(&str) -> Result<Statement, postgres::Error>,
    ) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.0.get(sql) {
            return Ok(s.clone());
        }
        let s = prepare(sql)?;
        if self.0.len() >= MAX_STATEMENTS {
            self.0.clear();
        }
        self.0.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

/// Running statements, on a connection or in a transaction, each prepared once on the
/// connection.
pub(super) trait Run {
    /// The connection or transaction, and the statements prepared on its connection.
    fn parts(&mut self) -> (&mut impl GenericClient, &mut Prepared);

    fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let (c, prepared) = self.parts();
        let s = prepared.get(sql, |q| c.prepare(q))?;
        c.query(&s, params)
    }

    fn query_opt(&mut self, sql: &str, params: Params<'_>) -> Result<Option<Row>, postgres::Error> {
        let (c, prepared) = self.parts();
        let s = prepared.get(sql, |q| c.prepare(q))?;
        c.query_opt(&s, params)
    }

    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, postgres::Error> {
        let (c, prepared) = self.parts();
        let s = prepared.get(sql, |q| c.prepare(q))?;
        c.execute(&s, params)
    }

    /// The one row a statement returns (an error if it returns none or several).
    fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row, postgres::Error> {
        let (c, prepared) = self.parts();
        let s = prepared.get(sql, |q| c.prepare(q))?;
        c.query_one(&s, params)
    }
}

/// A connection and the statements prepared on it.
pub(crate) struct PgConn {
    client: Client,
    prepared: Prepared,
}

impl PgConn {
    pub(super) fn new(client: Client) -> Self {
        Self {
            client,
            prepared: Prepared::default(),
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Runs SQL text as is (several statements, no parameters, nothing kept).
    #[cfg(test)]
    pub(crate) fn batch_execute(&mut self, sql: &str) -> Result<(), postgres::Error> {
        self.client.batch_execute(sql)
    }

    /// A read-write transaction at the server's default isolation (read committed).
    pub(super) fn transaction(&mut self) -> Result<PgTxn<'_>, postgres::Error> {
        let Self { client, prepared } = self;
        Ok(PgTxn {
            tx: client.transaction()?,
            prepared,
        })
    }

    /// A read-only transaction that sees one snapshot of the database throughout.
    pub(super) fn snapshot(&mut self) -> Result<PgTxn<'_>, postgres::Error> {
        let Self { client, prepared } = self;
        Ok(PgTxn {
            tx: client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?,
            prepared,
        })
    }
}

impl Run for PgConn {
    fn parts(&mut self) -> (&mut impl GenericClient, &mut Prepared) {
        (&mut self.client, &mut self.prepared)
    }
}

impl super::super::pool::Conn for PgConn {
    fn is_broken(&self) -> bool {
        self.is_closed()
    }
}

/// A transaction on a [`PgConn`], running that connection's prepared statements.
pub(super) struct PgTxn<'a> {
    tx: Transaction<'a>,
    prepared: &'a mut Prepared,
}

impl PgTxn<'_> {
    pub(super) fn commit(self) -> Result<(), postgres::Error> {
        self.tx.commit()
    }
}

impl Run for PgTxn<'_> {
    fn parts(&mut self) -> (&mut impl GenericClient, &mut Prepared) {
        (&mut self.tx, &mut *self.prepared)
    }
}
