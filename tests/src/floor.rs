//! Compression floors the benchmarks print next to the bytes a sync moved: what the same data
//! takes when compressed together with zstd at level 3, so a ratio above 1 is what the
//! protocol spends beyond the data itself.

use fieldsync_client::Client;
use fieldsync_core::store::StoreError;

/// zstd level of every floor.
const LEVEL: i32 = 3;

/// The replica's documents as one zstd stream of their uncompressed snapshots, in id order:
/// the floor a download of the same documents can approach.
pub fn download_floor(client: &Client) -> anyhow::Result<u64> {
    let all = client.with_store(|s| {
        let mut all = Vec::new();
        for (id, _) in s.all_heads()? {
            all.extend(s.automerge(id)?.save_nocompress());
        }
        Ok::<_, StoreError>(all)
    })?;
    Ok(zstd::bulk::compress(&all, LEVEL)?.len() as u64)
}

/// The replica's waiting local changes (its outbox) as one zstd stream of their encoded
/// bytes, in outbox order: the floor an upload of them can approach.
pub fn upload_floor(client: &Client) -> anyhow::Result<u64> {
    let all = client.with_store(|s| {
        let mut all = Vec::new();
        for c in s.outbox_batch(0, 1 << 40, usize::MAX)? {
            all.extend_from_slice(&c.bytes);
        }
        Ok::<_, StoreError>(all)
    })?;
    Ok(zstd::bulk::compress(&all, LEVEL)?.len() as u64)
}
