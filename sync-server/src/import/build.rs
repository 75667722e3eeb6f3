//! One imported customer as one Automerge change: a new customer document with everything
//! the record holds, or, for a customer imported before, the edits that bring it to the
//! record (nothing when it already matches). Ids are derived from the external id, so the
//! same record imported again finds its customer, contacts, addresses and equipment.
//!
//! Edits go through the model's own functions (`create_customer`, `apply_edit`): an import
//! writes nothing a laptop could not, and the relay's rules judge the result as they judge
//! every upload.

use automerge::{ActorId, AutoCommit};
use fieldsync_core::DocId;
use fieldsync_core::model::{
    AddressInput, ContactInput, Customer, CustomerEdit, CustomerField, Document, Edit, EditCtx,
    EquipmentInput, NewCustomer, apply_edit, create_customer, normalize_phone, read_document,
};
use sha2::{Digest, Sha256};

use super::RowResult;
use super::input::ImportRecord;

/// The id of the customer imported as `external_id` into `org`: the same on every import into
/// this relay. `salt` is the relay's own secret (see `super::import`), so nobody without it
/// can tell which id an ERP number will get and create that document first.
pub fn customer_id(salt: &[u8], org: &str, external_id: &str) -> DocId {
    let digest = derive(&[
        b"fieldsync import customer",
        salt,
        org.as_bytes(),
        external_id.trim().as_bytes(),
    ]);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    DocId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

/// An item id (address, contact, equipment) derived from the customer and what identifies the
/// item in the source: 32 hex digits, the shape of the model's own item ids.
fn item_id(external_id: &str, kind: &str, key: &str) -> String {
    hex::encode(
        &derive(&[
            b"fieldsync import item",
            external_id.trim().as_bytes(),
            kind.as_bytes(),
            key.trim().to_lowercase().as_bytes(),
        ])[..16],
    )
}

/// The device whose actor wrote a document's first change (its actor's first 16 bytes).
pub fn creator(doc: &mut AutoCommit) -> Option<uuid::Uuid> {
    let first = doc.get_changes(&[]).into_iter().next()?;
    uuid::Uuid::from_slice(first.actor_id().to_bytes().get(..16)?).ok()
}

fn derive(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// How an item is recognised again: contacts by name, equipment by serial (else model and
/// position), addresses by label (else position).
fn contact_key(c: &ContactInput) -> String {
    c.name.clone().unwrap_or_default()
}
fn equipment_key(e: &EquipmentInput, i: usize) -> String {
    e.serial
        .clone()
        .unwrap_or_else(|| format!("{}#{i}", e.model.as_deref().unwrap_or("")))
}
fn address_key(a: &AddressInput, i: usize) -> String {
    a.label.clone().unwrap_or_else(|| format!("#{i}"))
}

/// Builds the change for `rec`: on `existing` (the stored customer, loaded) when there is
/// one, else a new document. `actor` is the import's (its first 16 bytes the import
/// device's id). Returns what it did and the change's bytes (none when nothing changes).
pub fn change_for(
    rec: &ImportRecord,
    id: DocId,
    org: &str,
    existing: Option<AutoCommit>,
    actor: &ActorId,
    ctx: &EditCtx,
) -> Result<(RowResult, Option<Vec<u8>>), String> {
    let (mut doc, action) = match existing {
        Some(doc) => (doc.with_actor(actor.clone()), RowResult::Updated),
        None => (
            AutoCommit::new().with_actor(actor.clone()),
            RowResult::Created,
        ),
    };
    let before = doc.get_heads();
    let edits = if action == RowResult::Created {
        let new = NewCustomer {
            org: org.to_string(),
            scope: rec.scope.trim().to_string(),
            name: rec.name.trim().to_string(),
            phone: rec.phones.first().cloned(),
            industry: rec.industry.clone(),
            stage: rec.stage.clone(),
            source: rec.source.clone(),
            contacts: Vec::new(),
            equipment: Vec::new(),
        };
        create_customer(&mut doc, id, &new, ctx).map_err(|e| e.to_string())?;
        edits_for(rec, None)
    } else {
        let Document::Customer(current) = read_document(&doc).map_err(|e| e.to_string())? else {
            return Err(format!(
                "the document {id} that customer {} maps to is not a customer",
                rec.external_id
            ));
        };
        edits_for(rec, Some(&current))
    };
    for e in &edits {
        apply_edit(&mut doc, &Edit::Customer(e.clone()), ctx).map_err(|e| e.to_string())?;
    }
    doc.commit();
    let change = doc
        .get_changes(&before)
        .pop()
        .map(|c| c.raw_bytes().to_vec());
    let action = match (action, &change) {
        (RowResult::Updated, None) => RowResult::Unchanged,
        (a, _) => a,
    };
    Ok((action, change))
}

/// The edits that bring `current` (none for a new customer, created with its name, scope,
/// first phone, industry, stage and source) to what `rec` says. Only what the record names is
/// written: an empty column leaves the customer's value as it is.
fn edits_for(rec: &ImportRecord, current: Option<&Customer>) -> Vec<CustomerEdit> {
    let mut out = Vec::new();
    if let Some(c) = current {
        for (field, want, have) in [
            (
                CustomerField::Name,
                Some(rec.name.trim()),
                Some(c.name.as_str()),
            ),
            (
                CustomerField::Industry,
                rec.industry.as_deref(),
                c.industry.as_deref(),
            ),
            (
                CustomerField::Stage,
                rec.stage.as_deref(),
                Some(c.stage.as_str()),
            ),
            (
                CustomerField::Source,
                rec.source.as_deref(),
                c.source.as_deref(),
            ),
        ] {
            if let Some(w) = want
                && Some(w) != have
            {
                out.push(CustomerEdit::Set(field, w.to_string()));
            }
        }
        if rec.scope.trim() != c.header.scope {
            out.push(CustomerEdit::SetScope(rec.scope.trim().to_string()));
        }
    }
    let have_email = current.and_then(|c| c.email.as_deref());
    if let Some(email) = rec.email.as_deref()
        && Some(email) != have_email
    {
        out.push(CustomerEdit::Set(CustomerField::Email, email.to_string()));
    }
    let phones: Vec<String> = current.map_or_else(
        || {
            rec.phones
                .first()
                .map(|p| normalize_phone(p))
                .into_iter()
                .collect()
        },
        |c| c.phones.iter().map(|p| p.normalized.clone()).collect(),
    );
    for p in &rec.phones {
        if !phones.contains(&normalize_phone(p)) {
            out.push(CustomerEdit::AddPhone(p.clone()));
        }
    }
    for (i, a) in rec.addresses.iter().enumerate() {
        let id = item_id(&rec.external_id, "address", &address_key(a, i));
        match current.and_then(|c| c.addresses.iter().find(|x| x.id == id)) {
            None => out.push(CustomerEdit::AddAddress(id, a.clone())),
            Some(x) => {
                // As for contacts: a column the file leaves empty keeps the stored value.
                let same = [
                    (&a.label, &x.label),
                    (&a.street, &x.street),
                    (&a.city, &x.city),
                    (&a.region, &x.region),
                    (&a.postcode, &x.postcode),
                    (&a.country, &x.country),
                ]
                .iter()
                .all(|(want, have)| want.as_ref().is_none_or(|w| have.as_ref() == Some(w)));
                if !same {
                    out.push(CustomerEdit::UpdateAddress(id, a.clone()));
                }
            }
        }
    }
    for c in &rec.contacts {
        let id = item_id(&rec.external_id, "contact", &contact_key(c));
        match current.and_then(|cur| cur.contacts.iter().find(|x| x.id == id)) {
            None => out.push(CustomerEdit::AddContact(id, c.clone())),
            Some(x) => {
                let same = c.title.as_ref().is_none_or(|t| x.title.as_ref() == Some(t))
                    && c.phone.as_ref().is_none_or(|t| x.phone.as_ref() == Some(t))
                    && c.email.as_ref().is_none_or(|t| x.email.as_ref() == Some(t))
                    && c.is_purchaser.is_none_or(|p| x.is_purchaser == p);
                if !same {
                    out.push(CustomerEdit::UpdateContact(id, c.clone()));
                }
            }
        }
    }
    for (i, e) in rec.equipment.iter().enumerate() {
        let id = item_id(&rec.external_id, "equipment", &equipment_key(e, i));
        match current.and_then(|cur| cur.equipment.iter().find(|x| x.id == id)) {
            None => out.push(CustomerEdit::AddEquipment(id, e.clone())),
            Some(x) => {
                let same = e.model.as_ref().is_none_or(|m| &x.model == m)
                    && e.serial
                        .as_ref()
                        .is_none_or(|s| x.serial.as_ref() == Some(s))
                    && e.status
                        .as_ref()
                        .is_none_or(|s| x.status.as_ref() == Some(s));
                if !same {
                    out.push(CustomerEdit::UpdateEquipment(id, e.clone()));
                }
            }
        }
    }
    out
}
