//! [`RelayBlobs`]: the relay's attachment bytes behind one type, whichever backend holds
//! them (`sqlite/blobs.rs`: a file beside `relay.db`; `postgres/blobs.rs`: rows in the shared
//! database). The rules over them are `fieldsync_core::attachment::relay`.

use fieldsync_core::attachment::BlobHash;
use fieldsync_core::attachment::relay::{BlobDb, BlobRow};
use fieldsync_core::ids::Millis;
use fieldsync_core::protocol::DeviceInfo;
use uuid::Uuid;

use super::sqlite::blobs::SqliteBlobs;
use super::{PgRelayStore, RelayStore, RelayStoreError};

/// The attachment store of a relay (see the module doc). Cloning gives another handle.
#[derive(Clone, Debug)]
pub enum RelayBlobs {
    /// `attachments.db` beside the SQLite store.
    Sqlite(SqliteBlobs),
    /// Tables of the PostgreSQL store.
    Postgres(PgRelayStore),
}

/// A completed attachment upload, as the audit trail records it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttachmentUpload {
    /// When the last piece was stored (ms).
    pub at: i64,
    /// The device that uploaded it.
    pub device_id: Uuid,
    /// Its name, if the relay still knows it.
    pub device_name: Option<String>,
    /// The attachment's content hash.
    pub hash: BlobHash,
    /// Its size.
    pub size: u64,
    /// The documents that refer to it now.
    pub docs: Vec<fieldsync_core::DocId>,
}

impl RelayBlobs {
    /// Completed attachment uploads, newest first: by `device` (an id or a name), since
    /// `since` (ms), at most `limit`; with each, the documents that refer to it now.
    pub fn uploads(
        &self,
        device: Option<&str>,
        since: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AttachmentUpload>, RelayStoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match self {
            Self::Sqlite(s) => s.uploads(device, since, limit),
            Self::Postgres(p) => p.attachment_uploads(device, since, limit),
        }
    }

    /// The attachment store of `store`, opened (created for SQLite) if need be.
    pub fn open(store: &RelayStore) -> Result<Self, RelayStoreError> {
        Ok(match store {
            RelayStore::Sqlite(s) => Self::Sqlite(SqliteBlobs::open(s)?),
            RelayStore::Postgres(p) => Self::Postgres(p.clone()),
        })
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            RelayBlobs::Sqlite($s) => $e,
            RelayBlobs::Postgres($s) => $e,
        }
    };
}

impl BlobDb for RelayBlobs {
    type Error = RelayStoreError;

    fn referenced_in(&self, device: &DeviceInfo, hash: BlobHash) -> Result<bool, RelayStoreError> {
        each!(self, s => s.referenced_in(device, hash))
    }

    fn blob(&self, hash: BlobHash) -> Result<Option<BlobRow>, RelayStoreError> {
        each!(self, s => s.blob(hash))
    }

    fn start_upload(
        &self,
        hash: BlobHash,
        size: u64,
        device: Uuid,
        now: Millis,
        stale_before: Millis,
    ) -> Result<BlobRow, RelayStoreError> {
        each!(self, s => s.start_upload(hash, size, device, now, stale_before))
    }

    fn store_piece(
        &self,
        hash: BlobHash,
        size: u64,
        index: u32,
        data: &[u8],
        outboard: Option<&[u8]>,
        now: Millis,
    ) -> Result<Option<u32>, RelayStoreError> {
        each!(self, s => s.store_piece(hash, size, index, data, outboard, now))
    }

    fn piece(&self, hash: BlobHash, index: u32) -> Result<Option<Vec<u8>>, RelayStoreError> {
        each!(self, s => s.piece(hash, index))
    }

    fn outboard(&self, hash: BlobHash) -> Result<Option<Vec<u8>>, RelayStoreError> {
        each!(self, s => s.outboard(hash))
    }

    fn device_bytes(&self, device: Uuid) -> Result<u64, RelayStoreError> {
        each!(self, s => s.device_bytes(device))
    }

    fn audit_upload(
        &self,
        hash: BlobHash,
        size: u64,
        device: Uuid,
        now: Millis,
    ) -> Result<(), RelayStoreError> {
        each!(self, s => s.audit_upload(hash, size, device, now))
    }

    fn touch(&self, hash: BlobHash, now: Millis) -> Result<(), RelayStoreError> {
        each!(self, s => s.touch(hash, now))
    }

    fn referenced(&self, hash: BlobHash) -> Result<bool, RelayStoreError> {
        each!(self, s => s.referenced(hash))
    }

    fn untouched_since(
        &self,
        before: Millis,
        after: Option<BlobHash>,
        limit: usize,
    ) -> Result<Vec<(BlobHash, u64, bool)>, RelayStoreError> {
        each!(self, s => s.untouched_since(before, after, limit))
    }

    fn delete_untouched(&self, hash: BlobHash, before: Millis) -> Result<bool, RelayStoreError> {
        each!(self, s => s.delete_untouched(hash, before))
    }
}
