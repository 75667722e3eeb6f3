//! Attachments of customers, visits and quotes: photos of a worn seal or a serial plate, a
//! signed delivery receipt, a signed quote PDF.
//!
//! [`Attachments::attach_file`] stores the file's bytes once per content in the laptop's
//! attachment store (beside the replica) and records the attachment in the document: its
//! BLAKE3 hash, size, media type, name, caption, author, time, and for an image a small
//! preview that travels with the document. The bytes travel separately, in verified pieces
//! on a stream of their own, whenever the laptop syncs; they never hold up a document edit.
//! Another laptop sees the entry (and the preview) with the document and fetches the bytes
//! on demand ([`Attachments::fetch`], `fieldsync attachment get`) or ahead of time.
//!
//! ```
//! use fieldsync_client::{Client, NewCustomer};
//!
//! # fn main() -> Result<(), fieldsync_client::ClientError> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let client = Client::open(dir.path().join("replica.db"))?;
//! let acme = client.customers().create(NewCustomer {
//!     scope: "north".into(),
//!     name: "Acme Mining".into(),
//!     ..Default::default()
//! })?;
//! let receipt = b"%PDF-1.7 signed delivery receipt";
//! let a = client
//!     .attachments()
//!     .attach_bytes(acme, "receipt.pdf", None, receipt, "signed on delivery")?;
//! assert_eq!(a.attachment.media_type, "application/pdf");
//! assert_eq!(client.attachments().read(a.attachment.hash)?, receipt);
//! assert_eq!(client.attachments().waiting()?.upload_files, 1);
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::path::Path;

use fieldsync_core::attachment::BlobHash;
use fieldsync_core::attachment::entry::{
    self, Attachment, AttachmentEdit, AttachmentInput, attachments, live_hashes,
};
use fieldsync_core::attachment::local::{BlobsWaiting, LocalBlob, LocalBlobError};
use fieldsync_core::attachment::pieces::PIECE_BYTES;
use fieldsync_core::ids::now_millis;
use fieldsync_core::model::new_item_id;
use serde::Serialize;

use crate::{Client, ClientError, DocId};

/// The replica meta key of the scopes whose attachments download in the background.
pub const PREFETCH_META_KEY: &str = "attachments.prefetch";

/// Files larger than this get no preview (decoding them would take too long).
const PREVIEW_FROM_AT_MOST: u64 = 64 << 20;

/// Where an attachment's bytes are, seen from this laptop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum BytesState {
    /// Held here in full; `uploaded` says whether the relay has them too (for one made
    /// here), `sent_bytes` how much of them it confirmed.
    Here {
        /// The relay confirmed every byte (or they came from it).
        uploaded: bool,
        /// Bytes the relay confirmed, for one being uploaded.
        sent_bytes: u64,
    },
    /// Being downloaded: `have_bytes` of them are here.
    Downloading {
        /// Bytes held.
        have_bytes: u64,
    },
    /// Not on this laptop (fetch it with [`Attachments::fetch`]).
    NotHere,
}

/// An attachment of a document, and where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttachmentInfo {
    /// The document it belongs to.
    pub doc: DocId,
    /// The entry as the document records it (the preview is left out of JSON).
    #[serde(serialize_with = "without_preview")]
    pub attachment: Attachment,
    /// Whether it has a preview.
    pub has_preview: bool,
    /// Where its bytes are.
    pub bytes: BytesState,
    /// The relay's last refusal of its transfer, if any.
    pub refused: Option<String>,
}

fn without_preview<S: serde::Serializer>(a: &Attachment, s: S) -> Result<S::Ok, S::Error> {
    let mut a = a.clone();
    a.preview = None;
    a.serialize(s)
}

/// The media type of a file, from its name.
pub fn media_type_of(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "gif" => "image/gif",
        "tif" | "tiff" => "image/tiff",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "m4a" => "audio/mp4",
        _ => "application/octet-stream",
    }
}

/// Attachments: attach files to documents, list them, read and fetch their bytes.
#[derive(Clone, Copy)]
pub struct Attachments<'a> {
    client: &'a Client,
}

impl<'a> Attachments<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Self { client }
    }

    /// Attaches the file at `path` to document `doc` (a customer, visit or quote).
    pub fn attach_file(
        &self,
        doc: impl Into<DocId>,
        path: &Path,
        caption: &str,
    ) -> Result<AttachmentInfo, ClientError> {
        let doc = doc.into();
        let meta = std::fs::metadata(path).map_err(LocalBlobError::Io)?;
        if !meta.is_file() {
            return Err(ClientError::InvalidInput(format!(
                "{} is not a file",
                path.display()
            )));
        }
        let size = meta.len();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let media_type = media_type_of(&name);
        let preview = if media_type.starts_with("image/") && size <= PREVIEW_FROM_AT_MOST {
            std::fs::read(path)
                .ok()
                .and_then(|b| crate::thumbnail::thumbnail(&b))
        } else {
            None
        };
        let owned = path.to_path_buf();
        let hash = self.client.blobs(|b| {
            b.add(
                size,
                || {
                    let f = std::fs::File::open(&owned)?;
                    Ok(Box::new(std::io::BufReader::new(f)) as Box<dyn std::io::Read>)
                },
                now_millis(),
            )
        })?;
        self.record(doc, hash, size, media_type, &name, caption, preview)
    }

    /// Attaches bytes held in memory as a file named `name`; the media type is guessed from
    /// the name when `media_type` is `None`.
    pub fn attach_bytes(
        &self,
        doc: impl Into<DocId>,
        name: &str,
        media_type: Option<&str>,
        bytes: &[u8],
        caption: &str,
    ) -> Result<AttachmentInfo, ClientError> {
        let media_type = media_type.unwrap_or_else(|| media_type_of(name));
        let preview = if media_type.starts_with("image/") {
            crate::thumbnail::thumbnail(bytes)
        } else {
            None
        };
        let hash = self.client.blobs(|b| b.add_bytes(bytes, now_millis()))?;
        self.record(
            doc.into(),
            hash,
            bytes.len() as u64,
            media_type,
            name,
            caption,
            preview,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        doc: DocId,
        hash: BlobHash,
        size: u64,
        media_type: &str,
        name: &str,
        caption: &str,
        preview: Option<Vec<u8>>,
    ) -> Result<AttachmentInfo, ClientError> {
        if size == 0 {
            return Err(ClientError::InvalidInput("the file is empty".into()));
        }
        let id = new_item_id();
        let input = AttachmentInput {
            hash: Some(hash),
            size,
            media_type: media_type.to_string(),
            name: name.to_string(),
            caption: caption.to_string(),
            preview,
        };
        let edit = AttachmentEdit::Add(id.clone(), input);
        if let Err(e) = self
            .client
            .edit_doc(doc, |d, ctx| entry::apply(d, &edit, ctx))
        {
            // Nothing refers to the bytes just stored: they must not wait to upload forever.
            self.client.blobs(|b| b.forget_unreferenced(hash))?;
            return Err(e);
        }
        self.client.blobs(|b| b.add_ref(hash, doc.as_bytes()))?;
        self.client.nudge();
        self.list(doc)?
            .into_iter()
            .find(|a| a.attachment.id == id)
            .ok_or_else(|| ClientError::Corrupt("an attachment just made is not there".into()))
    }

    /// The attachments of document `doc`, removed ones left out, in the order they were
    /// attached.
    pub fn list(&self, doc: impl Into<DocId>) -> Result<Vec<AttachmentInfo>, ClientError> {
        let doc = doc.into();
        let am = self.client.with_store(|s| s.automerge(doc))?;
        let entries: Vec<Attachment> = attachments(&am)
            .into_iter()
            .filter(|a| a.removed_at.is_none())
            .collect();
        self.client.blobs(|b| {
            entries
                .into_iter()
                .map(|a| {
                    let local = b.get(a.hash)?;
                    Ok(info(doc, a, local.as_ref()))
                })
                .collect()
        })
    }

    /// The attachment of `doc` whose entry id starts or ends with `key`, or whose content hash
    /// starts with it.
    pub fn find(&self, doc: impl Into<DocId>, key: &str) -> Result<AttachmentInfo, ClientError> {
        let all = self.list(doc)?;
        // Ids are time-ordered: their ends tell attachments apart, their beginnings may not.
        let mut hits = all.into_iter().filter(|a| {
            a.attachment.id.starts_with(key)
                || a.attachment.id.ends_with(key)
                || a.attachment.hash.to_string().starts_with(key)
        });
        match (hits.next(), hits.next()) {
            (Some(a), None) if !key.is_empty() => Ok(a),
            (Some(_), Some(_)) => Err(ClientError::InvalidInput(format!(
                "`{key}` names more than one attachment; give more of its id"
            ))),
            _ => Err(ClientError::InvalidInput(format!(
                "no attachment `{key}` on this document"
            ))),
        }
    }

    /// A held attachment's bytes (checked against its hash).
    pub fn read(&self, hash: BlobHash) -> Result<Vec<u8>, ClientError> {
        self.client.blobs(|b| b.read(hash))
    }

    /// Writes a held attachment's bytes to the file `out` (checked against the hash; the file
    /// appears only once complete).
    pub fn save_to(&self, hash: BlobHash, out: &Path) -> Result<u64, ClientError> {
        let dir = out.parent().filter(|p| !p.as_os_str().is_empty());
        let io = |e: std::io::Error| ClientError::Attachment(LocalBlobError::Io(e));
        let tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new("."))).map_err(io)?;
        let n = self.client.blobs(|b| {
            let mut f = std::io::BufWriter::new(tmp.as_file());
            let n = b.write_to(hash, &mut f)?;
            std::io::Write::flush(&mut f)?;
            Ok(n)
        })?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(out).map_err(|e| io(e.error))?;
        Ok(n)
    }

    /// Asks for attachment `hash` (of `size` bytes) of document `doc` to be downloaded at the
    /// next sync (the background sync fetches it at once). Nothing happens if it is held.
    pub fn fetch(
        &self,
        doc: impl Into<DocId>,
        hash: BlobHash,
        size: u64,
    ) -> Result<(), ClientError> {
        let doc = doc.into();
        let am = self.client.with_store(|s| s.automerge(doc))?;
        if !live_hashes(&am).contains(&hash) {
            return Err(ClientError::InvalidInput(format!(
                "document {doc} has no attachment {}",
                hash.short()
            )));
        }
        self.client.blobs(|b| {
            b.want(hash, size, now_millis())?;
            b.add_ref(hash, doc.as_bytes())
        })?;
        self.client.nudge();
        Ok(())
    }

    /// The scopes whose attachments this laptop downloads in the background, as their
    /// documents arrive (`["*"]`: every scope; empty: only on demand, the default).
    pub fn prefetch_scopes(&self) -> Result<Vec<String>, ClientError> {
        let raw = self.client.with_store(|s| s.meta(PREFETCH_META_KEY))?;
        match raw {
            None => Ok(Vec::new()),
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| ClientError::Corrupt(format!("{PREFETCH_META_KEY}: {e}"))),
        }
    }

    /// Sets the scopes whose attachments download in the background (see
    /// [`Attachments::prefetch_scopes`]), and asks at once for every attachment of the
    /// documents of those scopes this laptop holds. Returns how many were asked for.
    pub fn set_prefetch_scopes(&self, scopes: &[String]) -> Result<usize, ClientError> {
        let json = serde_json::to_vec(scopes)
            .map_err(|e| ClientError::InvalidInput(format!("scopes: {e}")))?;
        self.client
            .with_store(|s| s.set_meta(PREFETCH_META_KEY, &json))?;
        let ids: Vec<DocId> = self
            .client
            .with_store(|s| s.all_heads())?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        self.prefetch(&ids)
    }

    /// Asks for the attachments of documents `docs` that are in the prefetch scopes and not
    /// held (the sync calls this for the documents each download brings). Returns how many.
    pub fn prefetch(&self, docs: &[DocId]) -> Result<usize, ClientError> {
        let scopes = self.prefetch_scopes()?;
        if scopes.is_empty() || docs.is_empty() {
            return Ok(0);
        }
        let all = scopes.iter().any(|s| s == "*");
        let mut wanted: Vec<(DocId, BlobHash, u64)> = Vec::new();
        self.client.with_store(|s| {
            for id in docs {
                let Ok(am) = s.automerge(*id) else {
                    continue;
                };
                let Ok(header) = fieldsync_core::model::read_header(&am) else {
                    continue;
                };
                if !all && !scopes.contains(&header.scope) {
                    continue;
                }
                for a in attachments(&am)
                    .into_iter()
                    .filter(|a| a.removed_at.is_none())
                {
                    wanted.push((*id, a.hash, a.size));
                }
            }
        });
        let n = self.client.blobs(|b| {
            let mut n = 0;
            for (doc, hash, size) in &wanted {
                if !b.get(*hash)?.is_some_and(|l| l.complete || l.want) {
                    b.want(*hash, *size, now_millis())?;
                    n += 1;
                }
                b.add_ref(*hash, doc.as_bytes())?;
            }
            Ok(n)
        })?;
        if n > 0 {
            self.client.nudge();
        }
        Ok(n)
    }

    /// Changes an attachment's caption.
    pub fn set_caption(
        &self,
        doc: impl Into<DocId>,
        id: &str,
        caption: &str,
    ) -> Result<(), ClientError> {
        let edit = AttachmentEdit::SetCaption(id.to_string(), caption.to_string());
        self.client
            .edit_doc(doc, |d, ctx| entry::apply(d, &edit, ctx))
    }

    /// Removes an attachment from its document (the entry stays in the document's history
    /// as removed; its bytes leave this laptop at the next [`Attachments::collect`]).
    pub fn remove(&self, doc: impl Into<DocId>, id: &str) -> Result<(), ClientError> {
        let edit = AttachmentEdit::Remove(id.to_string());
        self.client
            .edit_doc(doc, |d, ctx| entry::apply(d, &edit, ctx))
    }

    /// What waits to be uploaded and downloaded.
    pub fn waiting(&self) -> Result<BlobsWaiting, ClientError> {
        self.client.blobs(|b| b.waiting())
    }

    /// Every attachment the laptop's store knows (held, partly held or wanted).
    pub fn stored(&self) -> Result<Vec<LocalBlob>, ClientError> {
        self.client.blobs(|b| b.list())
    }

    /// Tries again the transfers the relay refused for good (after IT raised a limit).
    pub fn retry(&self) -> Result<usize, ClientError> {
        let n = self.client.blobs(|b| b.retry_refused())?;
        self.client.nudge();
        Ok(n)
    }

    /// Removes from this laptop the bytes no document on it keeps (documents that left its
    /// scopes, attachments removed), except those still waiting to be uploaded. Reads only
    /// the documents recorded as referring to what is held (an attachment with none recorded
    /// is kept). The sync runs it after each download. Returns the attachments removed and
    /// their bytes.
    pub fn collect(&self) -> Result<(u64, u64), ClientError> {
        let held: Vec<(BlobHash, Vec<Vec<u8>>)> = self.client.blobs(|b| {
            b.list()?
                .into_iter()
                .map(|l| Ok((l.hash, b.refs(l.hash)?)))
                .collect()
        })?;
        // Kept: what a document here still refers to (or what no document was recorded
        // for). Dropped whatever it waits for: what documents still here no longer keep
        // (removed before its upload); a document that left keeps its pending upload going.
        let (keep, dropped) = self.client.with_store(|s| {
            let mut keep = HashSet::new();
            let mut dropped = HashSet::new();
            for (hash, docs) in &held {
                if docs.is_empty() {
                    keep.insert(*hash);
                    continue;
                }
                let mut present = false;
                for d in docs {
                    let Some(id) = DocId::from_slice(d) else {
                        continue;
                    };
                    if !s.contains(id)? {
                        continue;
                    }
                    present = true;
                    if live_hashes(&s.automerge(id)?).contains(hash) {
                        keep.insert(*hash);
                        break;
                    }
                }
                if present && !keep.contains(hash) {
                    dropped.insert(*hash);
                }
            }
            Ok::<_, ClientError>((keep, dropped))
        })?;
        self.client.blobs(|b| b.collect(&keep, &dropped))
    }
}

fn info(doc: DocId, a: Attachment, local: Option<&LocalBlob>) -> AttachmentInfo {
    let bytes = match local {
        Some(l) if l.complete => BytesState::Here {
            uploaded: !l.upload_pending(),
            sent_bytes: (u64::from(l.uploaded) * PIECE_BYTES).min(l.size),
        },
        Some(l) if l.want => BytesState::Downloading {
            have_bytes: (u64::from(l.have) * PIECE_BYTES).min(l.size),
        },
        _ => BytesState::NotHere,
    };
    AttachmentInfo {
        doc,
        has_preview: a.preview.is_some(),
        refused: local.and_then(|l| l.refused.clone()),
        attachment: a,
        bytes,
    }
}
