//! `fieldsync customer …`: the command line of the customer commands.

use super::*;

#[derive(Subcommand, Debug)]
pub(crate) enum CustomerCmd {
    /// Add a customer
    Add {
        /// Name
        #[arg(long)]
        name: String,
        /// Territory
        #[arg(long)]
        scope: String,
        /// Phone number
        #[arg(long)]
        phone: Option<String>,
        /// Industry
        #[arg(long)]
        industry: Option<String>,
        /// Lifecycle stage [default: potential]
        #[arg(long)]
        stage: Option<String>,
        /// Where the customer came from (trade fair, referral, …)
        #[arg(long)]
        source: Option<String>,
        /// Create it even though IT has not granted this laptop the scope: the relay refuses
        /// it (kept in `fieldsync quarantine`) until IT grants the scope
        #[arg(long)]
        outside_grant: bool,
        /// Print the customer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Change a customer's fields (all in one change)
    Edit {
        /// The customer: id, id prefix or name
        #[arg(value_name = "CUSTOMER")]
        id: String,
        /// New name
        #[arg(long)]
        name: Option<String>,
        /// New short name
        #[arg(long)]
        short_name: Option<String>,
        /// Add a phone number
        #[arg(long)]
        phone: Option<String>,
        /// New industry
        #[arg(long)]
        industry: Option<String>,
        /// New business type
        #[arg(long)]
        business_type: Option<String>,
        /// New size class
        #[arg(long)]
        size: Option<String>,
        /// New source (where the customer came from)
        #[arg(long)]
        source: Option<String>,
        /// New lifecycle stage (back, or to churned: manager and above)
        #[arg(long)]
        stage: Option<String>,
        /// New e-mail address
        #[arg(long)]
        email: Option<String>,
        /// Print the customer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Attach a file (photo, signed PDF); its bytes upload at the next sync
    Attach(AttachArgs),
    /// Show a customer, with its contacts, addresses, equipment and notes
    Show {
        /// The customer: id, id prefix or name
        #[arg(value_name = "CUSTOMER")]
        id: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// List customers (archived ones left out)
    List {
        /// Only this territory
        #[arg(long)]
        scope: Option<String>,
        /// Only names containing this text
        #[arg(long)]
        search: Option<String>,
        /// Only customers in this lifecycle stage
        #[arg(long)]
        stage: Option<String>,
        /// Only customers this rep owns
        #[arg(long)]
        owner: Option<String>,
        /// Include archived customers
        #[arg(long)]
        all: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Customers with a phone number, on the customer or one of its contacts (any notation:
    /// `+86 138-0000-0001`, `13800000001`)
    FindPhone {
        /// The phone number
        phone: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// A customer's visits and quotes, newest first
    Timeline(CustomerIdArgs),
    /// Everything for a visit: contacts, equipment, open tasks, visits, quotes, the prices
    /// quoted before, and what changed since the last sync
    Brief(CustomerIdArgs),
    /// Archive a customer (hidden from listings, never deleted)
    Archive(CustomerIdArgs),
    /// Restore an archived customer
    Unarchive(CustomerIdArgs),
    /// Add a contact (a person at the customer)
    AddContact {
        /// The customer: id, id prefix or name
        #[arg(value_name = "CUSTOMER")]
        id: String,
        /// Name
        #[arg(long)]
        name: String,
        #[command(flatten)]
        fields: ContactFields,
        /// This person buys
        #[arg(long)]
        purchaser: bool,
        /// Already left the company
        #[arg(long)]
        inactive: bool,
        /// Print the customer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Change a contact's fields
    UpdateContact {
        /// The customer: id, id prefix or name
        #[arg(value_name = "CUSTOMER")]
        id: String,
        /// The contact: its id or id prefix (as `customer show` lists them), or its name
        #[arg(value_name = "CONTACT")]
        contact: String,
        /// New name
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        fields: ContactFields,
        /// This person buys
        #[arg(long, conflicts_with = "not_purchaser")]
        purchaser: bool,
        /// This person does not buy
        #[arg(long)]
        not_purchaser: bool,
        /// Left the company
        #[arg(long, conflicts_with = "active")]
        inactive: bool,
        /// Still (or again) at the company
        #[arg(long)]
        active: bool,
        /// Print the customer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Add an address (site, billing, …)
    AddAddress {
        /// The customer: id, id prefix or name
        #[arg(value_name = "CUSTOMER")]
        id: String,
        #[command(flatten)]
        fields: AddressFields,
        /// Print the customer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Change an address's fields, or archive or restore it
    UpdateAddress {
        /// The customer: id, id prefix or name
        #[arg(value_name = "CUSTOMER")]
        id: String,
        /// The address: its id or id prefix (as `customer show` lists them), or its label
        #[arg(value_name = "ADDRESS")]
        address: String,
        #[command(flatten)]
        fields: AddressFields,
        /// Archive the address (kept, shown as archived)
        #[arg(long, conflicts_with = "restore")]
        archive: bool,
        /// Restore an archived address
        #[arg(long)]
        restore: bool,
        /// Print the customer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Add a unit of installed equipment
    AddEquipment {
        /// The customer: id, id prefix or name
        #[arg(value_name = "CUSTOMER")]
        id: String,
        /// Model
        #[arg(long)]
        model: String,
        #[command(flatten)]
        fields: EquipmentFields,
        /// Print the customer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Change a unit of equipment's fields
    UpdateEquipment {
        /// The customer: id, id prefix or name
        #[arg(value_name = "CUSTOMER")]
        id: String,
        /// The unit: its id or id prefix (as `customer show` lists them), its serial number
        /// or its model
        #[arg(value_name = "EQUIPMENT")]
        equipment: String,
        /// New model
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        fields: EquipmentFields,
        /// Print the customer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Add a note (notes are kept, never edited)
    AddNote {
        /// The customer: id, id prefix or name
        #[arg(value_name = "CUSTOMER")]
        id: String,
        /// The note
        text: String,
        /// Print the customer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Add a product line the customer is interested in
    AddProductLine {
        /// The customer: id, id prefix or name
        #[arg(value_name = "CUSTOMER")]
        id: String,
        /// The product line
        #[arg(value_name = "LINE")]
        line: String,
        /// Print the customer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Record a competitor present at the customer
    AddCompetitor {
        /// The customer: id, id prefix or name
        #[arg(value_name = "CUSTOMER")]
        id: String,
        /// The competitor
        #[arg(value_name = "COMPETITOR")]
        competitor: String,
        /// Print the customer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Propose a credit limit (any role; a director sets the approved one)
    ProposeCreditLimit(CreditLimitArgs),
    /// Set the approved credit limit (director and above)
    SetCreditLimit(CreditLimitArgs),
    /// Propose payment terms (any role; a director sets the approved ones)
    ProposePaymentTerms(CustomerValueArgs),
    /// Set the approved payment terms (director and above)
    SetPaymentTerms(CustomerValueArgs),
    /// Assign the owner rep (manager and above)
    SetOwner(CustomerValueArgs),
    /// Move the customer, with its visits and quotes, to another territory (manager and
    /// above)
    SetScope(CustomerValueArgs),
    /// Set the customer's grade (admin)
    SetGrade(CustomerValueArgs),
}

#[derive(Args, Debug)]
pub(crate) struct CustomerIdArgs {
    /// The customer: id, id prefix or name
    #[arg(value_name = "CUSTOMER")]
    pub(crate) id: String,
    /// Print JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct CustomerValueArgs {
    /// The customer: id, id prefix or name
    #[arg(value_name = "CUSTOMER")]
    pub(crate) id: String,
    /// The new value (terms, owner's name, scope or grade)
    #[arg(value_name = "VALUE")]
    pub(crate) value: String,
    /// Print the customer as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct CreditLimitArgs {
    /// The customer: id, id prefix or name
    #[arg(value_name = "CUSTOMER")]
    pub(crate) id: String,
    /// The amount, e.g. 500000 or 500000.00 (two decimals at most)
    #[arg(value_name = "AMOUNT")]
    pub(crate) amount: String,
    /// ISO 4217 currency of the amount, e.g. CNY
    #[arg(long)]
    pub(crate) currency: String,
    /// Print the customer as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

/// A contact's fields besides its name and flags.
#[derive(Args, Debug, Default)]
pub(crate) struct ContactFields {
    /// Title or role at the customer
    #[arg(long)]
    pub(crate) title: Option<String>,
    /// Phone number
    #[arg(long)]
    pub(crate) phone: Option<String>,
    /// E-mail address
    #[arg(long)]
    pub(crate) email: Option<String>,
    /// Notes
    #[arg(long)]
    pub(crate) notes: Option<String>,
}

/// An address's fields.
#[derive(Args, Debug, Default)]
pub(crate) struct AddressFields {
    /// Label (site, billing, …)
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// Street
    #[arg(long)]
    pub(crate) street: Option<String>,
    /// City
    #[arg(long)]
    pub(crate) city: Option<String>,
    /// Region or province
    #[arg(long)]
    pub(crate) region: Option<String>,
    /// Postcode
    #[arg(long)]
    pub(crate) postcode: Option<String>,
    /// Country
    #[arg(long)]
    pub(crate) country: Option<String>,
}

/// A unit of equipment's fields besides its model.
#[derive(Args, Debug, Default)]
pub(crate) struct EquipmentFields {
    /// Serial number
    #[arg(long)]
    pub(crate) serial: Option<String>,
    /// Installation date: 2026-12-08 or 2026-12-08T09:30, read as UTC
    #[arg(long, value_name = "DATE")]
    pub(crate) installed: Option<String>,
    /// Status (running, down, retired, …)
    #[arg(long)]
    pub(crate) status: Option<String>,
}
