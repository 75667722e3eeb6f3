//! The customer handle.

use fieldsync_core::model::{
    self, AddressInput, ContactInput, Customer, CustomerEdit, CustomerField, Document, Edit,
    EquipmentInput, Money, NewCustomer, new_item_id, normalize_phone,
};
use fieldsync_core::{CustomerId, DocKind, Millis};

use crate::rows::{self, CustomerFilter, CustomerRow, IdleCustomer, TimelineEntry};
use crate::{Client, ClientError, typed_document};

/// Customers of the replica; get one with [`Client::customers`].
#[derive(Clone, Copy, Debug)]
pub struct Customers<'c> {
    client: &'c Client,
}

impl<'c> Customers<'c> {
    pub(crate) fn new(client: &'c Client) -> Self {
        Self { client }
    }

    /// Creates a customer and returns its id. An empty `org` is filled with the identity's
    /// organisation; `name` and `scope` are required.
    pub fn create(&self, mut new: NewCustomer) -> Result<CustomerId, ClientError> {
        self.client.with_ctx(|store, identity, ctx| {
            if new.org.trim().is_empty() {
                new.org = identity.org.clone();
            }
            let c = store.create(|doc, id| {
                model::create_customer(doc, id, &new, ctx)?;
                model::authority::check_local(None, &*doc, ctx.role)
            })?;
            Ok(CustomerId(c.id))
        })
    }

    /// Reads a customer document (contacts, equipment, addresses, notes, governed fields …).
    pub fn get(&self, id: CustomerId) -> Result<Customer, ClientError> {
        self.client.with_store(
            |store| match typed_document(store, id, DocKind::Customer)? {
                Document::Customer(c) => Ok(c),
                other => Err(ClientError::WrongKind {
                    id: id.into(),
                    expected: DocKind::Customer,
                    actual: other.header().kind,
                }),
            },
        )
    }

    /// Applies one edit to a customer.
    pub fn edit(&self, id: CustomerId, edit: CustomerEdit) -> Result<(), ClientError> {
        self.client.apply_edit(id, Edit::Customer(edit))
    }

    /// Applies several edits to a customer as one change: all of them or none.
    pub fn edit_all(&self, id: CustomerId, edits: &[CustomerEdit]) -> Result<(), ClientError> {
        self.client.edit_doc(id, |doc, ctx| {
            edits
                .iter()
                .try_for_each(|e| model::apply_edit(doc, &Edit::Customer(e.clone()), ctx))
        })
    }

    /// Archives (soft-deletes) a customer: hidden from default listings, never removed.
    pub fn archive(&self, id: CustomerId) -> Result<(), ClientError> {
        self.edit(id, CustomerEdit::Archive)
    }

    /// Restores an archived customer.
    pub fn unarchive(&self, id: CustomerId) -> Result<(), ClientError> {
        self.edit(id, CustomerEdit::Unarchive)
    }

    /// Customers sorted by name (case-insensitively for ASCII, then by id), filtered and paged.
    pub fn list(&self, filter: &CustomerFilter) -> Result<Vec<CustomerRow>, ClientError> {
        self.client.read(|c| rows::list_customers(c, filter))
    }

    /// What a search box finds for `text`: live customers whose name contains it, then (when
    /// it has 5 digits or more) those with it as a phone number in any notation
    /// ([`Customers::find_by_phone`]); at most `limit`. An empty text lists everyone by name.
    pub fn search(&self, text: &str, limit: u32) -> Result<Vec<CustomerRow>, ClientError> {
        let text = text.trim();
        let mut filter = CustomerFilter::new().page(limit, 0);
        if !text.is_empty() {
            filter = filter.search(text);
        }
        let mut rows = self.list(&filter)?;
        if text.chars().filter(char::is_ascii_digit).count() >= 5 {
            let by_phone = self.find_by_phone(text)?;
            for r in by_phone {
                if !r.archived && !rows.iter().any(|x| x.id == r.id) {
                    rows.push(r);
                }
            }
        }
        rows.truncate(limit as usize);
        Ok(rows)
    }

    /// Live customers with no visit done at or after `cutoff` (ms since the Unix epoch), the
    /// longest unvisited first, never-visited ones before them (not those created after
    /// `cutoff`: they are not overdue yet), at most `limit`.
    pub fn not_visited_since(
        &self,
        cutoff: Millis,
        limit: u32,
    ) -> Result<Vec<IdleCustomer>, ClientError> {
        self.client
            .read(|c| rows::not_visited_since(c, cutoff, limit))
    }

    /// Customers with this phone number, on the customer itself or on one of its contacts,
    /// sorted by name. The number is normalised first (`+86 (472) 555-0101` and
    /// `+864725550101` match). If nothing matches exactly and the number has no `+` and at
    /// least 7 digits, numbers ending in it match too, so `138 0000 0002` finds
    /// `+86 138 0000 0002`. Archived customers are included (flagged). Text without digits
    /// matches nothing.
    pub fn find_by_phone(&self, phone: &str) -> Result<Vec<CustomerRow>, ClientError> {
        let normalized = normalize_phone(phone);
        if normalized.trim_start_matches('+').is_empty() {
            return Ok(Vec::new());
        }
        self.client
            .read(|c| rows::customers_by_phone(c, &normalized))
    }

    /// The customer's visits and quotes, newest first (archived ones left out).
    pub fn timeline(&self, id: CustomerId) -> Result<Vec<TimelineEntry>, ClientError> {
        self.client.read(|c| rows::timeline(c, id))
    }

    // -----------------------------------------------------------------------------------------
    // Convenience edits.

    /// Sets a plain text field.
    pub fn set(
        &self,
        id: CustomerId,
        field: CustomerField,
        value: impl Into<String>,
    ) -> Result<(), ClientError> {
        self.edit(id, CustomerEdit::Set(field, value.into()))
    }

    /// Renames the customer.
    pub fn set_name(&self, id: CustomerId, name: impl Into<String>) -> Result<(), ClientError> {
        self.set(id, CustomerField::Name, name)
    }

    /// Sets the lifecycle stage.
    pub fn set_stage(&self, id: CustomerId, stage: impl Into<String>) -> Result<(), ClientError> {
        self.set(id, CustomerField::Stage, stage)
    }

    /// Adds a phone number.
    pub fn add_phone(&self, id: CustomerId, phone: impl Into<String>) -> Result<(), ClientError> {
        self.edit(id, CustomerEdit::AddPhone(phone.into()))
    }

    /// Adds a contact (a name is required) and returns its new item id.
    pub fn add_contact(
        &self,
        id: CustomerId,
        contact: ContactInput,
    ) -> Result<String, ClientError> {
        let item = new_item_id();
        self.edit(id, CustomerEdit::AddContact(item.clone(), contact))?;
        Ok(item)
    }

    /// Changes fields of a contact (`None` fields stay as they are).
    pub fn update_contact(
        &self,
        id: CustomerId,
        contact_id: &str,
        changes: ContactInput,
    ) -> Result<(), ClientError> {
        self.edit(id, CustomerEdit::UpdateContact(contact_id.into(), changes))
    }

    /// Adds an address and returns its new item id.
    pub fn add_address(
        &self,
        id: CustomerId,
        address: AddressInput,
    ) -> Result<String, ClientError> {
        let item = new_item_id();
        self.edit(id, CustomerEdit::AddAddress(item.clone(), address))?;
        Ok(item)
    }

    /// Adds a unit of installed equipment (a model is required) and returns its new item id.
    pub fn add_equipment(
        &self,
        id: CustomerId,
        equipment: EquipmentInput,
    ) -> Result<String, ClientError> {
        let item = new_item_id();
        self.edit(id, CustomerEdit::AddEquipment(item.clone(), equipment))?;
        Ok(item)
    }

    /// Changes fields of a unit of equipment.
    pub fn update_equipment(
        &self,
        id: CustomerId,
        equipment_id: &str,
        changes: EquipmentInput,
    ) -> Result<(), ClientError> {
        self.edit(
            id,
            CustomerEdit::UpdateEquipment(equipment_id.into(), changes),
        )
    }

    /// Adds a note and returns its new item id.
    pub fn add_note(&self, id: CustomerId, text: impl Into<String>) -> Result<String, ClientError> {
        let item = new_item_id();
        self.edit(id, CustomerEdit::AddNote(item.clone(), text.into()))?;
        Ok(item)
    }

    /// Adds a product line of interest.
    pub fn add_product_line(
        &self,
        id: CustomerId,
        line: impl Into<String>,
    ) -> Result<(), ClientError> {
        self.edit(id, CustomerEdit::AddProductLine(line.into()))
    }

    /// Records a competitor present at the account.
    pub fn add_competitor(
        &self,
        id: CustomerId,
        competitor: impl Into<String>,
    ) -> Result<(), ClientError> {
        self.edit(id, CustomerEdit::AddCompetitor(competitor.into()))
    }

    /// Proposes a credit limit (any role; a director approves it with
    /// [`Customers::set_credit_limit`]).
    pub fn propose_credit_limit(&self, id: CustomerId, limit: Money) -> Result<(), ClientError> {
        self.edit(id, CustomerEdit::ProposeCreditLimit(limit))
    }

    /// Sets the approved credit limit (director and above).
    pub fn set_credit_limit(&self, id: CustomerId, limit: Money) -> Result<(), ClientError> {
        self.edit(id, CustomerEdit::SetCreditLimit(limit))
    }

    /// Assigns the owner rep (manager and above).
    pub fn set_owner(&self, id: CustomerId, owner: impl Into<String>) -> Result<(), ClientError> {
        self.edit(id, CustomerEdit::SetOwner(owner.into()))
    }

    /// Moves the customer to another territory (manager and above).
    pub fn set_scope(&self, id: CustomerId, scope: impl Into<String>) -> Result<(), ClientError> {
        self.edit(id, CustomerEdit::SetScope(scope.into()))
    }
}
