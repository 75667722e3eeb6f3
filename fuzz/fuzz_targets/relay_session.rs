//! Arbitrary bytes as a stream of frames from a client into a `RelaySession` (handshake
//! included), over a small in-memory storage that validates uploads with `check_change`.
#![no_main]

use std::collections::BTreeMap;

use automerge::AutoCommit;
use fieldsync_core::protocol::codec::FrameDecoder;
use fieldsync_core::protocol::messages::{Hash, Rejection};
use fieldsync_core::protocol::relay::{SnapshotPage, StorageError};
use fieldsync_core::protocol::{
    DeviceInfo, Lack, LogEntry, Outcome, RelayLimits, RelaySession, RelayStorage, UploadChange,
    check_change,
};
use fieldsync_core::{DocId, Role};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

#[derive(Default)]
struct Mem {
    docs: BTreeMap<DocId, AutoCommit>,
    seq: u64,
}

impl RelayStorage for Mem {
    fn epoch(&mut self) -> Result<Uuid, StorageError> {
        Ok(Uuid::from_u128(1))
    }
    fn authenticate(
        &mut self,
        device_id: Uuid,
        credential: Option<&str>,
    ) -> Result<Option<DeviceInfo>, StorageError> {
        Ok((credential != Some("bad")).then(|| DeviceInfo {
            device_id,
            name: "fuzz".into(),
            role: Role::Admin,
            scopes: vec!["*".into()],
        }))
    }
    fn append(
        &mut self,
        device: &DeviceInfo,
        changes: &[UploadChange],
        _relayed: bool,
    ) -> Result<Vec<Outcome>, StorageError> {
        let mut out = Vec::new();
        for c in changes {
            let doc = self.docs.entry(c.doc_id).or_default();
            let r = check_change(
                doc,
                c.doc_id,
                &c.bytes,
                device,
                &|_| None,
                None,
                &|_| None,
                &|_, _| false,
            );
            out.push(match r {
                Ok(_) => {
                    self.seq += 1;
                    Outcome::Stored
                }
                Err(e) => {
                    if e.doc_lost {
                        // As the relay does: never keep using a document automerge broke.
                        self.docs.remove(&c.doc_id);
                    }
                    Outcome::Refused(Rejection {
                        hash: [0; 32],
                        reason: e.reason,
                        retry: e.retry,
                    })
                }
            });
        }
        Ok(out)
    }
    fn high_seq(&mut self) -> Result<u64, StorageError> {
        Ok(self.seq)
    }
    fn read_log(
        &mut self,
        _scope: &str,
        _after: u64,
        _max_bytes: usize,
    ) -> Result<(Vec<LogEntry>, bool), StorageError> {
        Ok((Vec::new(), false))
    }
    fn read_snapshots(
        &mut self,
        _scope: &str,
        _after: Option<DocId>,
        _max_bytes: usize,
    ) -> Result<SnapshotPage, StorageError> {
        Ok((Vec::new(), false))
    }
    fn missing(&mut self, docs: &[(DocId, Vec<Hash>)]) -> Result<Vec<Lack>, StorageError> {
        Ok(docs.iter().map(|_| Lack::Document).collect())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut storage = Mem::default();
    let mut session = RelaySession::new(RelayLimits::default());
    let mut dec = FrameDecoder::new();
    dec.push(data);
    while let Ok(Some(msg)) = dec.next_message() {
        let out = session.handle(&mut storage, msg);
        let _ = session.poll_live(&mut storage);
        if out.close {
            break;
        }
    }
});
