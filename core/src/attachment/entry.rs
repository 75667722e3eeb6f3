//! An attachment as a document records it: an entry in the document's `attachments` map.
//!
//! Entries are keyed by a fresh id, so two laptops attaching photos to one visit while apart
//! both keep theirs. An entry's content (hash, size, media type, name, author, time, preview)
//! is fixed when it is made; its caption may change (last writer wins) and it may be removed,
//! which is a mark (`removed_at`) rather than a deletion, like everything else in a document.
//!
//! Documents made by a version without attachments have no `attachments` map. The first
//! attachment creates it, and two laptops may create it concurrently; Automerge then keeps
//! both maps as a conflict at the root key. Readers take the union of every concurrent map
//! ([`attachments`]), and the relay's judge keeps every one of them ([`crate::model::judge`]
//! refuses a change that drops a root container), so neither laptop's attachments are lost.
//!
//! The relay judges what a change does to the entries ([`Entries`]): a new entry must be well
//! formed and within the limits below, and an existing entry's content may not change, so a
//! client writing Automerge directly can neither swap a photo under an approved quote nor
//! plant a reference the relay would refuse from the typed API.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use serde::{Deserialize, Serialize};

use super::BlobHash;
use crate::ids::Millis;
use crate::model::{EditCtx, ModelError};

/// The root key of the attachments map.
pub const ATTACHMENTS_KEY: &str = "attachments";

/// Largest preview (thumbnail) an entry may carry: it travels inside the document.
pub const MAX_PREVIEW_BYTES: usize = 32 << 10;

/// Largest attachment a document may refer to (a relay sets a lower limit of its own).
pub const MAX_ATTACHMENT_BYTES: u64 = 4 << 30;

const MAX_MEDIA_TYPE: usize = 127;
const MAX_NAME: usize = 255;
const MAX_CAPTION: usize = 2000;

/// An attachment as its document records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The entry's id within its document.
    pub id: String,
    /// The content's BLAKE3 hash.
    pub hash: BlobHash,
    /// The content's size in bytes.
    pub size: u64,
    /// The media type, e.g. `image/jpeg`.
    pub media_type: String,
    /// The file name it was attached from.
    pub name: String,
    /// A caption for people.
    pub caption: String,
    /// Who attached it.
    pub author: String,
    /// When it was attached (device time).
    pub at: Millis,
    /// A small preview (a JPEG thumbnail of an image), if one was made.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub preview: Option<Vec<u8>>,
    /// When it was removed, if it was (its bytes are then no longer kept for it).
    pub removed_at: Option<Millis>,
}

/// What is attached: the content's address and description.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInput {
    /// The content's BLAKE3 hash.
    pub hash: Option<BlobHash>,
    /// The content's size in bytes.
    pub size: u64,
    /// The media type.
    pub media_type: String,
    /// The file name.
    pub name: String,
    /// A caption.
    #[serde(default)]
    pub caption: String,
    /// A preview of at most [`MAX_PREVIEW_BYTES`].
    #[serde(default)]
    pub preview: Option<Vec<u8>>,
}

/// An edit of a document's attachments (any kind of document).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentEdit {
    /// Attach content under a fresh entry id.
    Add(String, AttachmentInput),
    /// Change an entry's caption.
    SetCaption(String, String),
    /// Remove an entry (a mark; the entry stays in the document's history).
    Remove(String),
}

/// Why an entry is not well formed, or `None` when it is.
fn problem(
    hash: Option<&str>,
    size: Option<i64>,
    media_type: &str,
    name: &str,
    caption: &str,
    preview: Option<usize>,
) -> Option<String> {
    let Some(hash) = hash else {
        return Some("no content hash".into());
    };
    if let Err(e) = hash.parse::<BlobHash>() {
        return Some(e);
    }
    match size {
        Some(s) if s > 0 && s as u64 <= MAX_ATTACHMENT_BYTES => {}
        Some(s) => {
            return Some(format!(
                "size {s} is outside 1 byte to {} GiB",
                MAX_ATTACHMENT_BYTES >> 30
            ));
        }
        None => return Some("no size".into()),
    }
    if media_type.len() > MAX_MEDIA_TYPE || !media_type.contains('/') {
        return Some(format!("media type `{media_type}` is not a media type"));
    }
    if name.len() > MAX_NAME {
        return Some(format!("file name longer than {MAX_NAME} bytes"));
    }
    if caption.len() > MAX_CAPTION {
        return Some(format!("caption longer than {MAX_CAPTION} bytes"));
    }
    if let Some(n) = preview
        && n > MAX_PREVIEW_BYTES
    {
        return Some(format!(
            "preview of {n} bytes is over the {} KiB limit",
            MAX_PREVIEW_BYTES >> 10
        ));
    }
    None
}

/// Checks what an [`AttachmentInput`] would write.
pub fn check_input(input: &AttachmentInput) -> Result<BlobHash, ModelError> {
    let hash = input
        .hash
        .ok_or_else(|| ModelError::Invalid("an attachment needs its content hash".into()))?;
    let size = i64::try_from(input.size).unwrap_or(i64::MAX);
    match problem(
        Some(&hash.to_string()),
        Some(size),
        &input.media_type,
        &input.name,
        &input.caption,
        input.preview.as_ref().map(Vec::len),
    ) {
        Some(p) => Err(ModelError::Invalid(format!("attachment: {p}"))),
        None => Ok(hash),
    }
}

/// Every concurrent `attachments` map of a document (usually one; see the module doc).
fn containers<R: ReadDoc>(doc: &R) -> Vec<ObjId> {
    doc.get_all(ROOT, ATTACHMENTS_KEY)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(v, id)| matches!(v, Value::Object(ObjType::Map)).then_some(id))
        .collect()
}

fn str_at<R: ReadDoc>(doc: &R, obj: &ObjId, key: &str) -> Option<String> {
    match doc.get(obj, key) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn int_at<R: ReadDoc>(doc: &R, obj: &ObjId, key: &str) -> Option<i64> {
    match doc.get(obj, key) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Int(i) => Some(*i),
            ScalarValue::Uint(u) => i64::try_from(*u).ok(),
            _ => None,
        },
        _ => None,
    }
}

fn bytes_at<R: ReadDoc>(doc: &R, obj: &ObjId, key: &str) -> Option<Vec<u8>> {
    match doc.get(obj, key) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Bytes(b) => Some(b.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// One entry as stored: `(id, object)` for every entry of every container.
fn raw_entries<R: ReadDoc>(doc: &R) -> Vec<(String, ObjId)> {
    let mut out = Vec::new();
    for c in containers(doc) {
        for key in doc.keys(&c) {
            for (v, id) in doc.get_all(&c, key.as_str()).unwrap_or_default() {
                if matches!(v, Value::Object(ObjType::Map)) {
                    out.push((key.clone(), id));
                }
            }
        }
    }
    out
}

fn read_entry<R: ReadDoc>(doc: &R, id: &str, obj: &ObjId) -> Option<Attachment> {
    let hash = str_at(doc, obj, "hash")?.parse().ok()?;
    let size = u64::try_from(int_at(doc, obj, "size")?).ok()?;
    Some(Attachment {
        id: id.to_string(),
        hash,
        size,
        media_type: str_at(doc, obj, "media_type").unwrap_or_default(),
        name: str_at(doc, obj, "name").unwrap_or_default(),
        caption: str_at(doc, obj, "caption").unwrap_or_default(),
        author: str_at(doc, obj, "author").unwrap_or_default(),
        at: int_at(doc, obj, "at").unwrap_or(0),
        preview: bytes_at(doc, obj, "preview"),
        removed_at: int_at(doc, obj, "removed_at"),
    })
}

/// A document's attachments, removed ones included, in entry-id order (ids are time-ordered
/// UUIDs, so this is the order they were attached in). An entry that does not read is
/// skipped (a newer schema may write what this version does not know).
pub fn attachments<R: ReadDoc>(doc: &R) -> Vec<Attachment> {
    let mut out: Vec<Attachment> = raw_entries(doc)
        .iter()
        .filter_map(|(id, obj)| read_entry(doc, id, obj))
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    out
}

/// The content hashes a document refers to and still keeps (removed entries left out).
///
/// Every object under an entry id counts (not only the one readers show), so that no change
/// can drop a reference by hiding an entry behind another.
pub fn live_hashes<R: ReadDoc>(doc: &R) -> Vec<BlobHash> {
    let mut h: Vec<BlobHash> = raw_entries(doc)
        .iter()
        .filter_map(|(id, obj)| read_entry(doc, id, obj))
        .filter(|a| a.removed_at.is_none())
        .map(|a| a.hash)
        .collect();
    h.sort();
    h.dedup();
    h
}

/// The entry `id` of a document, in whichever container holds it.
fn entry_obj(doc: &AutoCommit, id: &str) -> Result<ObjId, ModelError> {
    raw_entries(doc)
        .into_iter()
        .find(|(k, _)| k == id)
        .map(|(_, o)| o)
        .ok_or_else(|| ModelError::NoSuchItem {
            what: "attachment",
            id: id.to_string(),
        })
}

/// Applies an attachment edit to a document of any kind.
pub fn apply(doc: &mut AutoCommit, edit: &AttachmentEdit, ctx: &EditCtx) -> Result<(), ModelError> {
    match edit {
        AttachmentEdit::Add(id, input) => {
            let hash = check_input(input)?;
            if id.is_empty() || raw_entries(doc).iter().any(|(k, _)| k == id) {
                return Err(ModelError::Invalid(format!(
                    "attachment id `{id}` is empty or used"
                )));
            }
            let container = match containers(doc).into_iter().next() {
                Some(c) => c,
                None => doc.put_object(ROOT, ATTACHMENTS_KEY, ObjType::Map)?,
            };
            let e = doc.put_object(&container, id.as_str(), ObjType::Map)?;
            doc.put(&e, "hash", hash.to_string())?;
            doc.put(&e, "size", i64::try_from(input.size).unwrap_or(i64::MAX))?;
            doc.put(&e, "media_type", input.media_type.as_str())?;
            doc.put(&e, "name", input.name.as_str())?;
            doc.put(&e, "caption", input.caption.as_str())?;
            doc.put(&e, "author", ctx.author.as_str())?;
            doc.put(&e, "at", ctx.now)?;
            if let Some(p) = &input.preview {
                doc.put(&e, "preview", ScalarValue::Bytes(p.clone()))?;
            }
        }
        AttachmentEdit::SetCaption(id, caption) => {
            if caption.len() > MAX_CAPTION {
                return Err(ModelError::Invalid(format!(
                    "caption longer than {MAX_CAPTION} bytes"
                )));
            }
            let e = entry_obj(doc, id)?;
            doc.put(&e, "caption", caption.as_str())?;
        }
        AttachmentEdit::Remove(id) => {
            let e = entry_obj(doc, id)?;
            if int_at(doc, &e, "removed_at").is_none() {
                doc.put(&e, "removed_at", ctx.now)?;
            }
        }
    }
    Ok(())
}

/// The keys of an entry that are fixed once it is made.
const FIXED: [&str; 7] = [
    "hash",
    "size",
    "media_type",
    "name",
    "author",
    "at",
    "preview",
];

/// What the relay's judge compares of a document's attachments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    /// Every entry: id → a rendering of its fixed content (every concurrent value).
    fixed: Vec<(String, String)>,
    /// Entries that are not well formed: id → why.
    bad: Vec<(String, String)>,
    /// Entries marked removed.
    removed: Vec<String>,
}

fn render_all<R: ReadDoc>(doc: &R, obj: &ObjId, key: &str) -> String {
    let mut vals: Vec<String> = doc
        .get_all(obj, key)
        .unwrap_or_default()
        .into_iter()
        .map(|(v, _)| match v {
            Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Bytes(b) => format!("bytes:{}", BlobHash::of(b)),
                other => format!("{other:?}"),
            },
            Value::Object(t) => format!("<{t:?}>"),
        })
        .collect();
    vals.sort();
    vals.join("|")
}

impl Entries {
    /// Reads the attachment entries of a document.
    pub fn of<R: ReadDoc>(doc: &R) -> Self {
        let mut out = Self::default();
        for c in containers(doc) {
            for key in doc.keys(&c) {
                for (v, obj) in doc.get_all(&c, key.as_str()).unwrap_or_default() {
                    if !matches!(v, Value::Object(ObjType::Map)) {
                        out.bad.push((key.clone(), "an entry is not a map".into()));
                        continue;
                    }
                    let fixed: Vec<String> = FIXED
                        .iter()
                        .map(|k| format!("{k}={}", render_all(doc, &obj, k)))
                        .collect();
                    out.fixed.push((key.clone(), fixed.join(",")));
                    let single = |k: &str| doc.get_all(&obj, k).map(|v| v.len()).unwrap_or(0) <= 1;
                    let why = if FIXED.iter().all(|k| single(k)) {
                        problem(
                            str_at(doc, &obj, "hash").as_deref(),
                            int_at(doc, &obj, "size"),
                            &str_at(doc, &obj, "media_type").unwrap_or_default(),
                            &str_at(doc, &obj, "name").unwrap_or_default(),
                            &str_at(doc, &obj, "caption").unwrap_or_default(),
                            match doc.get(&obj, "preview") {
                                Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                                    ScalarValue::Bytes(b) => Some(b.len()),
                                    _ => Some(usize::MAX),
                                },
                                Ok(None) => None,
                                _ => Some(usize::MAX),
                            },
                        )
                    } else {
                        Some("conflicting content".into())
                    };
                    if let Some(why) = why {
                        out.bad.push((key.clone(), why));
                    }
                    if int_at(doc, &obj, "removed_at").is_some() {
                        out.removed.push(key.clone());
                    }
                }
            }
        }
        // An id made fresh for each entry names one object: a second one (a conflict, or the
        // same id in a second concurrent map) would show another attachment in its place.
        let mut ids: Vec<&String> = out.fixed.iter().map(|(id, _)| id).collect();
        ids.sort();
        let dups: Vec<String> = ids
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0].clone())
            .collect();
        for id in dups {
            out.bad.push((id, "two entries under one id".into()));
        }
        out.fixed.sort();
        out.bad.sort();
        out.bad.dedup();
        out.removed.sort();
        out
    }

    /// Why the change from `before` (`None`: a new document) to `self` is refused, if it is:
    /// a new entry that is not well formed, an entry whose content changed or that was
    /// deleted, or a removal taken back.
    pub fn refusal(&self, before: Option<&Self>) -> Option<String> {
        let empty = Self::default();
        let before = before.unwrap_or(&empty);
        for (id, why) in &self.bad {
            if !before.bad.iter().any(|(i, w)| i == id && w == why) {
                return Some(format!("attachment `{id}`: {why}"));
            }
        }
        for (id, fixed) in &before.fixed {
            if !self.fixed.iter().any(|(i, f)| i == id && f == fixed) {
                return Some(format!(
                    "attachment `{id}`: its content was changed or deleted (attach the new file as a new attachment)"
                ));
            }
        }
        for id in &before.removed {
            if !self.removed.contains(id) {
                return Some(format!("attachment `{id}`: a removal cannot be taken back"));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    fn ctx(who: &str) -> EditCtx {
        EditCtx::at(who, Role::Rep, 1_700_000_000_000)
    }

    fn input(byte: u8) -> AttachmentInput {
        AttachmentInput {
            hash: Some(BlobHash::of(&[byte])),
            size: 1,
            media_type: "image/jpeg".into(),
            name: format!("{byte}.jpg"),
            caption: "seal".into(),
            preview: Some(vec![byte; 100]),
        }
    }

    fn fork(doc: &mut AutoCommit, actor: u8) -> AutoCommit {
        doc.fork()
            .with_actor(automerge::ActorId::from(vec![actor; 16]))
    }

    #[test]
    fn two_laptops_creating_the_map_concurrently_both_keep_their_attachments() {
        let mut base = AutoCommit::new();
        base.put(ROOT, "kind", "visit").expect("put");
        let mut a = fork(&mut base, 1);
        let mut b = fork(&mut base, 2);
        apply(
            &mut a,
            &AttachmentEdit::Add("a1".into(), input(1)),
            &ctx("li"),
        )
        .expect("a");
        apply(
            &mut b,
            &AttachmentEdit::Add("b1".into(), input(2)),
            &ctx("wang"),
        )
        .expect("b");
        let before = Entries::of(&a);
        a.merge(&mut b).expect("merge");
        let ids: Vec<String> = attachments(&a).into_iter().map(|x| x.id).collect();
        assert_eq!(ids, ["a1", "b1"]);
        assert_eq!(Entries::of(&a).refusal(Some(&before)), None);
        // Either side's next attachment goes into one of the maps and is read back.
        apply(
            &mut a,
            &AttachmentEdit::Add("a2".into(), input(3)),
            &ctx("li"),
        )
        .expect("a2");
        assert_eq!(attachments(&a).len(), 3);
    }

    #[test]
    fn an_entrys_content_is_fixed_and_a_removal_stays() {
        let mut doc = AutoCommit::new();
        apply(
            &mut doc,
            &AttachmentEdit::Add("x".into(), input(1)),
            &ctx("li"),
        )
        .expect("add");
        let before = Entries::of(&doc);
        assert_eq!(before.refusal(None), None);
        let mut swapped = doc.fork();
        let e = entry_obj(&swapped, "x").expect("entry");
        swapped
            .put(&e, "hash", BlobHash::of(b"other").to_string())
            .expect("put");
        assert!(Entries::of(&swapped).refusal(Some(&before)).is_some());
        let mut captioned = doc.fork();
        apply(
            &mut captioned,
            &AttachmentEdit::SetCaption("x".into(), "worn seal".into()),
            &ctx("li"),
        )
        .expect("caption");
        assert_eq!(Entries::of(&captioned).refusal(Some(&before)), None);
        apply(
            &mut captioned,
            &AttachmentEdit::Remove("x".into()),
            &ctx("li"),
        )
        .expect("rm");
        let removed = Entries::of(&captioned);
        assert_eq!(removed.refusal(Some(&before)), None);
        assert_eq!(live_hashes(&captioned), Vec::<BlobHash>::new());
        let mut undone = captioned.fork();
        let e = entry_obj(&undone, "x").expect("entry");
        undone.delete(&e, "removed_at").expect("delete");
        assert!(Entries::of(&undone).refusal(Some(&removed)).is_some());
        let mut deleted = doc.fork();
        let c = containers(&deleted)[0].clone();
        deleted.delete(&c, "x").expect("delete");
        assert!(Entries::of(&deleted).refusal(Some(&before)).is_some());
    }

    #[test]
    fn a_second_entry_under_an_existing_id_is_refused_and_hides_no_reference() {
        let mut doc = AutoCommit::new();
        let mut old = doc.fork();
        apply(
            &mut doc,
            &AttachmentEdit::Add("x".into(), input(1)),
            &ctx("li"),
        )
        .expect("add");
        let before = Entries::of(&doc);
        // Written from heads before `x` existed: its own map under the same id.
        apply(
            &mut old,
            &AttachmentEdit::Add("x".into(), input(2)),
            &ctx("mallory"),
        )
        .expect("forge");
        doc.merge(&mut old).expect("merge");
        assert!(Entries::of(&doc).refusal(Some(&before)).is_some());
        assert!(live_hashes(&doc).contains(&BlobHash::of(&[1])));
    }

    #[test]
    fn a_malformed_or_oversized_entry_is_refused() {
        let mut doc = AutoCommit::new();
        let c = doc
            .put_object(ROOT, ATTACHMENTS_KEY, ObjType::Map)
            .expect("map");
        let e = doc.put_object(&c, "x", ObjType::Map).expect("entry");
        doc.put(&e, "hash", "not a hash").expect("put");
        doc.put(&e, "size", 10).expect("put");
        doc.put(&e, "media_type", "image/jpeg").expect("put");
        assert!(Entries::of(&doc).refusal(None).is_some());
        let mut big = input(1);
        big.preview = Some(vec![0; MAX_PREVIEW_BYTES + 1]);
        assert!(check_input(&big).is_err());
        let mut doc = AutoCommit::new();
        let c = doc
            .put_object(ROOT, ATTACHMENTS_KEY, ObjType::Map)
            .expect("map");
        let e = doc.put_object(&c, "y", ObjType::Map).expect("entry");
        doc.put(&e, "hash", BlobHash::of(b"y").to_string())
            .expect("put");
        doc.put(&e, "size", 1).expect("put");
        doc.put(&e, "media_type", "image/jpeg").expect("put");
        doc.put(
            &e,
            "preview",
            ScalarValue::Bytes(vec![0; MAX_PREVIEW_BYTES + 1]),
        )
        .expect("put");
        assert!(Entries::of(&doc).refusal(None).is_some());
    }
}
