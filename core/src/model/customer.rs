//! The customer (account) document.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ROOT};
use serde::{Deserialize, Serialize};

use super::{
    EditCtx, Header, ModelError, Money, Note, add_note, add_to_set, am, read_notes, read_set,
    set_archived, set_scope, write_governed,
};
use crate::ids::{DocId, GovernedField, Millis};

/// Plain last-writer-wins text fields of a customer. Concurrent writes are kept as conflicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomerField {
    /// Legal or display name.
    Name,
    /// Short name.
    ShortName,
    /// Industry (mining, construction, agriculture, …).
    Industry,
    /// Business type.
    BusinessType,
    /// Size class.
    Size,
    /// Where the customer came from (first writer normally sets it).
    Source,
    /// Lifecycle stage (to_identify, potential, opportunity, order_customer, user, churned).
    Stage,
    /// Main e-mail address.
    Email,
}

impl CustomerField {
    /// The document key of the field.
    pub fn key(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::ShortName => "short_name",
            Self::Industry => "industry",
            Self::BusinessType => "business_type",
            Self::Size => "size",
            Self::Source => "source",
            Self::Stage => "stage",
            Self::Email => "email",
        }
    }

    /// All fields, for parsers and tests.
    pub const ALL: [Self; 8] = [
        Self::Name,
        Self::ShortName,
        Self::Industry,
        Self::BusinessType,
        Self::Size,
        Self::Source,
        Self::Stage,
        Self::Email,
    ];
}

/// What a new customer starts with. Missing fields deserialize as empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewCustomer {
    /// Organisation.
    pub org: String,
    /// Territory.
    pub scope: String,
    /// Name (required, non-empty).
    pub name: String,
    /// Optional first phone number.
    pub phone: Option<String>,
    /// Optional industry.
    pub industry: Option<String>,
    /// Optional lifecycle stage (defaults to `potential`).
    pub stage: Option<String>,
    /// Optional source.
    pub source: Option<String>,
    /// Contacts to start with (each gets a fresh id).
    #[serde(default)]
    pub contacts: Vec<ContactInput>,
    /// Installed equipment to start with (each gets a fresh id).
    #[serde(default)]
    pub equipment: Vec<EquipmentInput>,
}

/// A phone number, raw as entered plus its normalised form (digits only) used for lookup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phone {
    /// Digits only, with a leading `+` kept if present.
    pub normalized: String,
    /// As entered.
    pub raw: String,
}

/// Normalises a phone number for lookup: keeps digits (and a leading `+`), drops the rest.
pub fn normalize_phone(raw: &str) -> String {
    let trimmed = raw.trim();
    let mut out = String::new();
    if trimmed.starts_with('+') {
        out.push('+');
    }
    out.extend(trimmed.chars().filter(char::is_ascii_digit));
    out
}

/// Fields of an address; on update, `None` leaves a field unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressInput {
    /// Label (site, billing, …).
    pub label: Option<String>,
    /// Street.
    pub street: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Region or province.
    pub region: Option<String>,
    /// Postcode.
    pub postcode: Option<String>,
    /// Country.
    pub country: Option<String>,
    /// Archive or restore the address.
    pub archived: Option<bool>,
}

/// A customer address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Stable id.
    pub id: String,
    /// Label.
    pub label: Option<String>,
    /// Street.
    pub street: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Postcode.
    pub postcode: Option<String>,
    /// Country.
    pub country: Option<String>,
    /// Archived addresses are kept.
    pub archived: bool,
}

/// Fields of a contact; on update, `None` leaves a field unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactInput {
    /// Name (required when adding).
    pub name: Option<String>,
    /// Title or role at the customer.
    pub title: Option<String>,
    /// Phone.
    pub phone: Option<String>,
    /// E-mail.
    pub email: Option<String>,
    /// Whether this person buys.
    pub is_purchaser: Option<bool>,
    /// Notes.
    pub notes: Option<String>,
    /// Active or left the company.
    pub active: Option<bool>,
}

/// A person at the customer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// Stable id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Title.
    pub title: Option<String>,
    /// Phone.
    pub phone: Option<String>,
    /// E-mail.
    pub email: Option<String>,
    /// Purchaser flag.
    pub is_purchaser: bool,
    /// Notes.
    pub notes: Option<String>,
    /// Still at the company.
    pub active: bool,
}

/// Fields of an installed unit; on update, `None` leaves a field unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EquipmentInput {
    /// Model (required when adding).
    pub model: Option<String>,
    /// Serial number.
    pub serial: Option<String>,
    /// Installation date.
    pub installed_at: Option<Millis>,
    /// Status (running, down, retired, …).
    pub status: Option<String>,
}

/// A unit of equipment installed at the customer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Equipment {
    /// Stable id.
    pub id: String,
    /// Model.
    pub model: String,
    /// Serial number.
    pub serial: Option<String>,
    /// Installation date.
    pub installed_at: Option<Millis>,
    /// Status.
    pub status: Option<String>,
}

/// A customer as read from its document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Header.
    #[serde(flatten)]
    pub header: Header,
    /// Name.
    pub name: String,
    /// Short name.
    pub short_name: Option<String>,
    /// Industry.
    pub industry: Option<String>,
    /// Business type.
    pub business_type: Option<String>,
    /// Size class.
    pub size: Option<String>,
    /// Source.
    pub source: Option<String>,
    /// Lifecycle stage.
    pub stage: String,
    /// Main e-mail.
    pub email: Option<String>,
    /// Phone numbers (add-wins set keyed by normalised number).
    pub phones: Vec<Phone>,
    /// Addresses.
    pub addresses: Vec<Address>,
    /// Contacts.
    pub contacts: Vec<Contact>,
    /// Installed equipment.
    pub equipment: Vec<Equipment>,
    /// Product lines of interest (add-wins set).
    pub product_lines: Vec<String>,
    /// Competitors present at the account (add-wins set).
    pub competitors: Vec<String>,
    /// Notes (add-only).
    pub notes: Vec<Note>,
    /// Credit limit proposed by a rep.
    pub proposed_credit_limit: Option<Money>,
    /// Payment terms proposed by a rep.
    pub proposed_payment_terms: Option<String>,
    /// Approved credit limit (director).
    pub credit_limit: Option<Money>,
    /// Approved payment terms (director).
    pub payment_terms: Option<String>,
    /// Grade, computed centrally (admin).
    pub grade: Option<String>,
    /// Owner rep (manager).
    pub owner: Option<String>,
}

/// An edit to a customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomerEdit {
    /// Set a plain text field.
    Set(CustomerField, String),
    /// Add a phone number (add-wins set).
    AddPhone(String),
    /// Add an address under a fresh id.
    AddAddress(String, AddressInput),
    /// Change fields of an address.
    UpdateAddress(String, AddressInput),
    /// Add a contact under a fresh id.
    AddContact(String, ContactInput),
    /// Change fields of a contact.
    UpdateContact(String, ContactInput),
    /// Add a unit of equipment under a fresh id.
    AddEquipment(String, EquipmentInput),
    /// Change fields of a unit of equipment.
    UpdateEquipment(String, EquipmentInput),
    /// Add a product line of interest.
    AddProductLine(String),
    /// Add a competitor seen at the account.
    AddCompetitor(String),
    /// Add a note under a fresh id.
    AddNote(String, String),
    /// Propose a credit limit (any role).
    ProposeCreditLimit(Money),
    /// Propose payment terms (any role).
    ProposePaymentTerms(String),
    /// Set the approved credit limit (director).
    SetCreditLimit(Money),
    /// Set the approved payment terms (director).
    SetPaymentTerms(String),
    /// Set the grade (admin).
    SetGrade(String),
    /// Set the owner rep (manager).
    SetOwner(String),
    /// Move to another territory (manager).
    SetScope(String),
    /// Archive (soft delete).
    Archive,
    /// Restore from the archive.
    Unarchive,
}

pub(super) fn create(
    root: &mut am::MapInit,
    id: DocId,
    new: &NewCustomer,
    now: Millis,
) -> Result<(), ModelError> {
    // Items given with a new customer get ids derived from the document and their place.
    let item_id = |what: &[u8], i: usize| {
        super::derived_uuid(now, &[id.as_bytes(), what, &(i as u64).to_le_bytes()])
            .simple()
            .to_string()
    };
    if new.name.trim().is_empty() {
        return Err(ModelError::Invalid("a customer needs a name".into()));
    }
    if new.scope.trim().is_empty() {
        return Err(ModelError::Invalid("a customer needs a scope".into()));
    }
    let stage = new.stage.as_deref().unwrap_or("potential");
    super::authority::check_stage(stage)?;
    root.str("name", &new.name)
        .str("stage", stage)
        .opt_str("industry", new.industry.as_deref())
        .opt_str("source", new.source.as_deref())
        .empty_maps(&[
            "addresses",
            "product_lines",
            "competitors",
            "notes",
            "proposed",
        ]);
    let mut phones = am::MapInit::default();
    if let Some(p) = &new.phone {
        let n = normalize_phone(p);
        if n.trim_start_matches('+').is_empty() {
            return Err(ModelError::Invalid(format!("`{p}` is not a phone number")));
        }
        phones.str(&n, p.trim());
    }
    root.map("phones", phones);
    let mut contacts = am::MapInit::default();
    for (i, c) in new.contacts.iter().enumerate() {
        if c.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
            return Err(ModelError::Invalid("a contact needs a name".into()));
        }
        let mut m = am::MapInit::default();
        m.opt_str("name", c.name.as_deref())
            .opt_str("title", c.title.as_deref())
            .opt_str("phone", c.phone.as_deref())
            .opt_str("email", c.email.as_deref())
            .opt_str("notes", c.notes.as_deref())
            .bool("active", c.active.unwrap_or(true));
        if let Some(b) = c.is_purchaser {
            m.bool("is_purchaser", b);
        }
        contacts.map(&item_id(b"contact", i), m);
    }
    root.map("contacts", contacts);
    let mut equipment = am::MapInit::default();
    for (i, e) in new.equipment.iter().enumerate() {
        if e.model.as_deref().is_none_or(|n| n.trim().is_empty()) {
            return Err(ModelError::Invalid("equipment needs a model".into()));
        }
        let mut m = am::MapInit::default();
        m.opt_str("model", e.model.as_deref())
            .opt_str("serial", e.serial.as_deref())
            .opt_str("status", e.status.as_deref())
            .opt_int("installed_at", e.installed_at);
        equipment.map(&item_id(b"equipment", i), m);
    }
    root.map("equipment", equipment);
    Ok(())
}

fn put_fields(
    doc: &mut AutoCommit,
    obj: &ObjId,
    fields: &[(&str, Option<&str>)],
) -> Result<(), ModelError> {
    for (k, v) in fields {
        am::put_opt_str(doc, obj, k, *v)?;
    }
    Ok(())
}

fn item(doc: &AutoCommit, coll: &str, id: &str, what: &'static str) -> Result<ObjId, ModelError> {
    let c = am::req_map(doc, &ROOT, coll)?;
    am::get_map(doc, &c, id).ok_or_else(|| ModelError::NoSuchItem {
        what,
        id: id.to_string(),
    })
}

fn new_item(doc: &mut AutoCommit, coll: &str, id: &str) -> Result<ObjId, ModelError> {
    let c = am::req_map(doc, &ROOT, coll)?;
    if id.is_empty() || am::get_map(doc, &c, id).is_some() {
        return Err(ModelError::Invalid(format!(
            "item id `{id}` is empty or already used in {coll}"
        )));
    }
    am::new_map(doc, &c, id)
}

fn write_address(doc: &mut AutoCommit, a: &ObjId, input: &AddressInput) -> Result<(), ModelError> {
    put_fields(
        doc,
        a,
        &[
            ("label", input.label.as_deref()),
            ("street", input.street.as_deref()),
            ("city", input.city.as_deref()),
            ("region", input.region.as_deref()),
            ("postcode", input.postcode.as_deref()),
            ("country", input.country.as_deref()),
        ],
    )?;
    if let Some(b) = input.archived {
        doc.put(a, "archived", b)?;
    }
    Ok(())
}

fn write_contact(doc: &mut AutoCommit, c: &ObjId, input: &ContactInput) -> Result<(), ModelError> {
    put_fields(
        doc,
        c,
        &[
            ("name", input.name.as_deref()),
            ("title", input.title.as_deref()),
            ("phone", input.phone.as_deref()),
            ("email", input.email.as_deref()),
            ("notes", input.notes.as_deref()),
        ],
    )?;
    if let Some(b) = input.is_purchaser {
        doc.put(c, "is_purchaser", b)?;
    }
    if let Some(b) = input.active {
        doc.put(c, "active", b)?;
    }
    Ok(())
}

fn write_equipment(
    doc: &mut AutoCommit,
    e: &ObjId,
    input: &EquipmentInput,
) -> Result<(), ModelError> {
    put_fields(
        doc,
        e,
        &[
            ("model", input.model.as_deref()),
            ("serial", input.serial.as_deref()),
            ("status", input.status.as_deref()),
        ],
    )?;
    am::put_opt_i64(doc, e, "installed_at", input.installed_at)
}

fn write_money(
    doc: &mut AutoCommit,
    obj: &ObjId,
    prefix: &str,
    m: &Money,
) -> Result<(), ModelError> {
    if m.currency.trim().is_empty() {
        return Err(ModelError::Invalid("money needs a currency".into()));
    }
    doc.put(obj, format!("{prefix}_minor"), m.amount_minor)?;
    doc.put(obj, format!("{prefix}_currency"), m.currency.as_str())?;
    Ok(())
}

fn read_money(obj: &am::HMap, prefix: &str) -> Option<Money> {
    Some(Money {
        amount_minor: am::hget_i64(obj, &format!("{prefix}_minor"))?,
        currency: am::hget_str(obj, &format!("{prefix}_currency"))?,
    })
}

pub(super) fn apply(
    doc: &mut AutoCommit,
    edit: &CustomerEdit,
    ctx: &EditCtx,
) -> Result<(), ModelError> {
    match edit {
        CustomerEdit::Set(field, value) => {
            if *field == CustomerField::Name && value.trim().is_empty() {
                return Err(ModelError::Invalid("a customer needs a name".into()));
            }
            if *field == CustomerField::Stage {
                super::authority::check_stage(value)?;
                let from = am::hget_str(&am::hydrate_root(doc)?, "stage").unwrap_or_default();
                let needed = super::authority::stage_move_role(&from, value);
                if ctx.role < needed {
                    return Err(ModelError::Forbidden {
                        role: ctx.role,
                        field: GovernedField::StageBack,
                        needed,
                    });
                }
            }
            doc.put(ROOT, field.key(), value.as_str())?;
        }
        CustomerEdit::AddPhone(raw) => {
            let n = normalize_phone(raw);
            if n.trim_start_matches('+').is_empty() {
                return Err(ModelError::Invalid(format!(
                    "`{raw}` is not a phone number"
                )));
            }
            let phones = am::req_map(doc, &ROOT, "phones")?;
            doc.put(&phones, n.as_str(), raw.trim())?;
        }
        CustomerEdit::AddAddress(id, input) => {
            let a = new_item(doc, "addresses", id)?;
            write_address(doc, &a, input)?;
        }
        CustomerEdit::UpdateAddress(id, input) => {
            let a = item(doc, "addresses", id, "address")?;
            write_address(doc, &a, input)?;
        }
        CustomerEdit::AddContact(id, input) => {
            if input.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
                return Err(ModelError::Invalid("a contact needs a name".into()));
            }
            let c = new_item(doc, "contacts", id)?;
            doc.put(&c, "active", true)?;
            write_contact(doc, &c, input)?;
        }
        CustomerEdit::UpdateContact(id, input) => {
            let c = item(doc, "contacts", id, "contact")?;
            write_contact(doc, &c, input)?;
        }
        CustomerEdit::AddEquipment(id, input) => {
            if input.model.as_deref().is_none_or(|n| n.trim().is_empty()) {
                return Err(ModelError::Invalid("equipment needs a model".into()));
            }
            let e = new_item(doc, "equipment", id)?;
            write_equipment(doc, &e, input)?;
        }
        CustomerEdit::UpdateEquipment(id, input) => {
            let e = item(doc, "equipment", id, "equipment")?;
            write_equipment(doc, &e, input)?;
        }
        CustomerEdit::AddProductLine(p) => add_to_set(doc, "product_lines", p)?,
        CustomerEdit::AddCompetitor(c) => add_to_set(doc, "competitors", c)?,
        CustomerEdit::AddNote(id, text) => add_note(doc, "notes", id, text, ctx)?,
        CustomerEdit::ProposeCreditLimit(m) => {
            let p = am::req_map(doc, &ROOT, "proposed")?;
            write_money(doc, &p, "credit_limit", m)?;
        }
        CustomerEdit::ProposePaymentTerms(t) => {
            let p = am::req_map(doc, &ROOT, "proposed")?;
            doc.put(&p, "payment_terms", t.as_str())?;
        }
        CustomerEdit::SetCreditLimit(m) => write_governed(
            doc,
            GovernedField::CreditLimit,
            |d, g| write_money(d, g, "credit_limit", m),
            ctx,
        )?,
        CustomerEdit::SetPaymentTerms(t) => write_governed(
            doc,
            GovernedField::PaymentTerms,
            |d, g| Ok(d.put(g, "payment_terms", t.as_str())?),
            ctx,
        )?,
        CustomerEdit::SetGrade(t) => write_governed(
            doc,
            GovernedField::Grade,
            |d, g| Ok(d.put(g, "grade", t.as_str())?),
            ctx,
        )?,
        CustomerEdit::SetOwner(t) => write_governed(
            doc,
            GovernedField::Owner,
            |d, g| Ok(d.put(g, "owner", t.as_str())?),
            ctx,
        )?,
        CustomerEdit::SetScope(s) => {
            if s.trim().is_empty() {
                return Err(ModelError::Invalid("scope must not be empty".into()));
            }
            set_scope(doc, s, ctx)?
        }
        CustomerEdit::Archive => set_archived(doc, true)?,
        CustomerEdit::Unarchive => set_archived(doc, false)?,
    }
    Ok(())
}

pub(super) fn read(root: &am::HMap, header: Header) -> Result<Customer, ModelError> {
    let s = |k: &str| am::hget_str(root, k);
    let name = s("name").ok_or_else(|| ModelError::Malformed("customer without name".into()))?;
    let phones = am::hget_map(root, "phones")
        .map(|m| {
            am::hkeys(m)
                .into_iter()
                .map(|n| Phone {
                    raw: am::hget_str(m, &n).unwrap_or_else(|| n.clone()),
                    normalized: n,
                })
                .collect()
        })
        .unwrap_or_default();
    let coll = |k: &str| {
        am::hget_map(root, k)
            .map(|m| am::hitems(m))
            .unwrap_or_default()
    };
    let addresses = coll("addresses")
        .into_iter()
        .map(|(id, a)| Address {
            label: am::hget_str(a, "label"),
            street: am::hget_str(a, "street"),
            city: am::hget_str(a, "city"),
            region: am::hget_str(a, "region"),
            postcode: am::hget_str(a, "postcode"),
            country: am::hget_str(a, "country"),
            archived: am::hget_bool(a, "archived").unwrap_or(false),
            id,
        })
        .collect();
    let contacts = coll("contacts")
        .into_iter()
        .map(|(id, c)| Contact {
            name: am::hget_str(c, "name").unwrap_or_default(),
            title: am::hget_str(c, "title"),
            phone: am::hget_str(c, "phone"),
            email: am::hget_str(c, "email"),
            is_purchaser: am::hget_bool(c, "is_purchaser").unwrap_or(false),
            notes: am::hget_str(c, "notes"),
            active: am::hget_bool(c, "active").unwrap_or(true),
            id,
        })
        .collect();
    let equipment = coll("equipment")
        .into_iter()
        .map(|(id, e)| Equipment {
            model: am::hget_str(e, "model").unwrap_or_default(),
            serial: am::hget_str(e, "serial"),
            installed_at: am::hget_i64(e, "installed_at"),
            status: am::hget_str(e, "status"),
            id,
        })
        .collect();
    let proposed = am::hget_map(root, "proposed");
    let governed = am::hget_map(root, "governed");
    let g = |k: &str| governed.as_ref().and_then(|g| am::hget_str(g, k));
    Ok(Customer {
        name,
        short_name: s("short_name"),
        industry: s("industry"),
        business_type: s("business_type"),
        size: s("size"),
        source: s("source"),
        stage: s("stage").unwrap_or_else(|| "potential".into()),
        email: s("email"),
        phones,
        addresses,
        contacts,
        equipment,
        product_lines: read_set(root, "product_lines"),
        competitors: read_set(root, "competitors"),
        notes: read_notes(root, "notes"),
        proposed_credit_limit: proposed
            .as_ref()
            .and_then(|p| read_money(p, "credit_limit")),
        proposed_payment_terms: proposed
            .as_ref()
            .and_then(|p| am::hget_str(p, "payment_terms")),
        credit_limit: governed
            .as_ref()
            .and_then(|g| read_money(g, "credit_limit")),
        payment_terms: g("payment_terms"),
        grade: g("grade"),
        owner: g("owner"),
        header,
    })
}
