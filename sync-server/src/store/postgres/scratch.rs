//! [`ScratchDatabase`]: a throwaway database per test, on a real PostgreSQL server.

use super::*;

/// A database of its own for one test, created on a PostgreSQL server and dropped (with
/// its connections) when this is dropped. For the relay's tests and tools, not for
/// production use.
#[doc(hidden)]
#[derive(Debug)]
pub struct ScratchDatabase {
    server: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    /// The server tests use: `FIELDSYNC_TEST_PG`, else the local default
    /// `postgres://postgres@127.0.0.1:5432/postgres` (trust authentication).
    pub fn server_url() -> String {
        std::env::var("FIELDSYNC_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    /// Creates a uniquely named database on the server at `server` (a URL naming an
    /// existing database to connect to, such as `postgres`).
    pub fn create(server: &str) -> Result<Self, RelayStoreError> {
        let name = format!("fieldsync_test_{}", Uuid::new_v4().simple());
        let url = match server.rsplit_once('/') {
            Some((base, _)) if base.contains("://") && base.len() > "postgres://".len() => {
                format!("{base}/{name}")
            }
            _ => {
                return Err(RelayStoreError::Invalid(format!(
                    "{} does not name a database",
                    redact_url(server)
                )));
            }
        };
        let sql = format!("CREATE DATABASE {name}");
        Self::admin(server, sql)?;
        Ok(Self {
            server: server.to_string(),
            name,
            url,
        })
    }

    /// The scratch database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs one statement on the server, on a thread of its own (a synchronous client must
    /// not run on an async runtime's thread, where tests may call this).
    fn admin(server: &str, sql: String) -> Result<(), RelayStoreError> {
        let server = server.to_string();
        std::thread::spawn(move || -> Result<(), RelayStoreError> {
            let location = redact_url(&server);
            let config: postgres::Config = server
                .parse()
                .map_err(|e| RelayStoreError::Connect(location.clone(), pg_detail(&e)))?;
            let mut c = connect(&config, &PgTls::Plain, &location)?;
            c.batch_execute(&sql)?;
            Ok(())
        })
        .join()
        .map_err(|_| RelayStoreError::Invalid("the admin thread panicked".into()))?
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = Self::admin(&self.server, sql) {
            tracing::warn!(database = %self.name, error = %e, "cannot drop a scratch database");
        }
    }
}
