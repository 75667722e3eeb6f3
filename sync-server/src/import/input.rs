//! What an import reads: customers from an ERP export, as JSON (an array of records) or CSV
//! (one row per customer, or several rows with the same `external_id` that each add an
//! address, a contact or a unit of equipment: the shape most ERP exports have).
//!
//! Reading checks shape only (columns, types, the fields every customer needs); what a
//! customer may hold is judged later by the same rules as any change. A bad row is an error
//! of its own and never stops the others.

use std::collections::HashMap;

use fieldsync_core::model::{AddressInput, ContactInput, EquipmentInput};
use serde::Deserialize;

/// One customer to import.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRecord {
    /// The customer's id in the source system: the same id imported again updates the same
    /// customer.
    pub external_id: String,
    /// Name.
    pub name: String,
    /// The territory or dealer that sees the customer.
    pub scope: String,
    /// Organisation [default: the import's `--org`].
    #[serde(default)]
    pub org: Option<String>,
    /// Phone numbers.
    #[serde(default)]
    pub phones: Vec<String>,
    /// Industry.
    #[serde(default)]
    pub industry: Option<String>,
    /// Lifecycle stage [default for a new customer: potential].
    #[serde(default)]
    pub stage: Option<String>,
    /// Where the customer came from.
    #[serde(default)]
    pub source: Option<String>,
    /// Main e-mail address.
    #[serde(default)]
    pub email: Option<String>,
    /// Addresses.
    #[serde(default)]
    pub addresses: Vec<AddressInput>,
    /// Contacts.
    #[serde(default)]
    pub contacts: Vec<ContactInput>,
    /// Installed equipment.
    #[serde(default)]
    pub equipment: Vec<EquipmentInput>,
}

/// A record read, or why its row could not be.
#[derive(Clone, Debug)]
pub struct Read {
    /// Where it came from: `row 12` (CSV, counting the header as row 1; several for a
    /// customer spread over rows) or `record 3` (JSON, from 1).
    pub at: String,
    /// The record's external id, when the row has one (also for a bad row).
    pub external_id: Option<String>,
    /// The record, or what is wrong with it.
    pub record: Result<ImportRecord, String>,
}

/// The columns a CSV import understands; `external_id`, `name` and `scope` are required.
pub const CSV_COLUMNS: &[&str] = &[
    "external_id",
    "name",
    "scope",
    "org",
    "phone",
    "industry",
    "stage",
    "source",
    "email",
    "address_label",
    "street",
    "city",
    "region",
    "postcode",
    "country",
    "contact_name",
    "contact_title",
    "contact_phone",
    "contact_email",
    "contact_is_purchaser",
    "equipment_model",
    "equipment_serial",
    "equipment_status",
];

/// Reads a JSON array of records.
pub fn read_json(text: &str) -> Result<Vec<Read>, String> {
    let values: Vec<serde_json::Value> = serde_json::from_str(text)
        .map_err(|e| format!("the file is not a JSON array of customers: {e}"))?;
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, v)| Read {
            at: format!("record {}", i + 1),
            external_id: v
                .get("external_id")
                .and_then(|id| id.as_str())
                .map(str::to_string),
            record: serde_json::from_value::<ImportRecord>(v)
                .map_err(|e| e.to_string())
                .and_then(checked),
        })
        .collect())
}

/// Reads CSV with a header row naming columns of [`CSV_COLUMNS`] (in any order); rows with
/// the same `external_id` make one customer.
pub fn read_csv(text: &str) -> Result<Vec<Read>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("the CSV header cannot be read: {e}"))?
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if let Some(unknown) = header.iter().find(|h| !CSV_COLUMNS.contains(&h.as_str())) {
        return Err(format!(
            "unknown column {unknown:?}; the columns are: {}",
            CSV_COLUMNS.join(", ")
        ));
    }
    for need in ["external_id", "name", "scope"] {
        if !header.iter().any(|h| h == need) {
            return Err(format!("the CSV header has no {need:?} column"));
        }
    }
    let mut order: Vec<String> = Vec::new();
    let mut groups: HashMap<String, (Vec<usize>, Result<ImportRecord, String>)> = HashMap::new();
    let mut out = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let line = i + 2;
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                out.push(Read {
                    at: format!("row {line}"),
                    external_id: None,
                    record: Err(e.to_string()),
                });
                continue;
            }
        };
        let get = |col: &str| -> Option<String> {
            header
                .iter()
                .position(|h| h == col)
                .and_then(|p| row.get(p))
                .map(str::to_string)
                .filter(|v| !v.is_empty())
        };
        let Some(id) = get("external_id") else {
            out.push(Read {
                at: format!("row {line}"),
                external_id: None,
                record: Err("no external_id".into()),
            });
            continue;
        };
        let entry = groups.entry(id.clone()).or_insert_with(|| {
            order.push(id.clone());
            (Vec::new(), Ok(ImportRecord::default()))
        });
        entry.0.push(line);
        if let Ok(rec) = &mut entry.1
            && let Err(e) = merge_row(rec, &id, &get)
        {
            entry.1 = Err(format!("row {line}: {e}"));
        }
    }
    for id in order {
        if let Some((lines, record)) = groups.remove(&id) {
            let at = match lines.as_slice() {
                [one] => format!("row {one}"),
                many => format!(
                    "rows {}",
                    many.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            out.push(Read {
                at,
                external_id: Some(id),
                record: record.and_then(checked),
            });
        }
    }
    Ok(out)
}

/// Adds one CSV row to the customer it belongs to: the customer's own fields from the first
/// row that has them (a later row that says otherwise is an error), and the row's address,
/// contact and equipment when it has one.
fn merge_row(
    rec: &mut ImportRecord,
    id: &str,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    rec.external_id = id.to_string();
    let one = |field: &mut String, col: &str| -> Result<(), String> {
        if let Some(v) = get(col) {
            if field.is_empty() {
                *field = v;
            } else if *field != v {
                return Err(format!(
                    "{col} {v:?} differs from {field:?} in an earlier row of customer {id}"
                ));
            }
        }
        Ok(())
    };
    one(&mut rec.name, "name")?;
    one(&mut rec.scope, "scope")?;
    for (field, col) in [
        (&mut rec.org, "org"),
        (&mut rec.industry, "industry"),
        (&mut rec.stage, "stage"),
        (&mut rec.source, "source"),
        (&mut rec.email, "email"),
    ] {
        if let Some(v) = get(col) {
            match field {
                Some(have) if *have != v => {
                    return Err(format!(
                        "{col} {v:?} differs from {have:?} in an earlier row of customer {id}"
                    ));
                }
                _ => *field = Some(v),
            }
        }
    }
    if let Some(p) = get("phone")
        && !rec.phones.contains(&p)
    {
        rec.phones.push(p);
    }
    let address = AddressInput {
        label: get("address_label"),
        street: get("street"),
        city: get("city"),
        region: get("region"),
        postcode: get("postcode"),
        country: get("country"),
        archived: None,
    };
    if address != AddressInput::default() && !rec.addresses.contains(&address) {
        rec.addresses.push(address);
    }
    let purchaser = match get("contact_is_purchaser").as_deref() {
        None => None,
        Some("1" | "true" | "yes" | "y") => Some(true),
        Some("0" | "false" | "no" | "n") => Some(false),
        Some(other) => return Err(format!("contact_is_purchaser {other:?} is not yes or no")),
    };
    let contact = ContactInput {
        name: get("contact_name"),
        title: get("contact_title"),
        phone: get("contact_phone"),
        email: get("contact_email"),
        is_purchaser: purchaser,
        ..ContactInput::default()
    };
    if contact != ContactInput::default() && !rec.contacts.contains(&contact) {
        if contact.name.is_none() {
            return Err("a contact needs contact_name".into());
        }
        rec.contacts.push(contact);
    }
    let unit = EquipmentInput {
        model: get("equipment_model"),
        serial: get("equipment_serial"),
        status: get("equipment_status"),
        installed_at: None,
    };
    if unit != EquipmentInput::default() && !rec.equipment.contains(&unit) {
        if unit.model.is_none() {
            return Err("equipment needs equipment_model".into());
        }
        rec.equipment.push(unit);
    }
    Ok(())
}

/// The fields every customer needs.
fn checked(r: ImportRecord) -> Result<ImportRecord, String> {
    if r.external_id.trim().is_empty() {
        return Err("no external_id".into());
    }
    if r.name.trim().is_empty() {
        return Err(format!("customer {} has no name", r.external_id));
    }
    if r.scope.trim().is_empty() {
        return Err(format!("customer {} has no scope", r.external_id));
    }
    if r.contacts
        .iter()
        .any(|c| c.name.as_deref().is_none_or(|n| n.trim().is_empty()))
    {
        return Err(format!("customer {}: a contact has no name", r.external_id));
    }
    if r.equipment
        .iter()
        .any(|e| e.model.as_deref().is_none_or(|m| m.trim().is_empty()))
    {
        return Err(format!(
            "customer {}: equipment has no model",
            r.external_id
        ));
    }
    // Items are found again by these keys at the next import: two with one key would be one
    // item written twice.
    let key = |v: &Option<String>| v.as_deref().map(|s| s.trim().to_lowercase());
    for (what, keys) in [
        (
            "contacts named",
            r.contacts.iter().map(|c| key(&c.name)).collect::<Vec<_>>(),
        ),
        (
            "units of equipment with serial",
            r.equipment.iter().map(|e| key(&e.serial)).collect(),
        ),
        (
            "addresses labelled",
            r.addresses.iter().map(|a| key(&a.label)).collect(),
        ),
    ] {
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = keys.into_iter().flatten().find(|k| !seen.insert(k.clone())) {
            return Err(format!(
                "customer {} has two {what} {dup:?}: an import finds each again by that, so \
                 merge them into one row or tell them apart",
                r.external_id
            ));
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_of_one_customer_add_its_contacts_and_equipment() {
        let csv = "external_id,name,scope,phone,contact_name,contact_phone,equipment_model,equipment_serial\n\
                   C1,Baotou Mining,north,+86 477 1,Wang Lei,138,CAT 320,S1\n\
                   C1,,,,Li Na,139,CAT 950,S2\n\
                   C2,Ordos Coal,north,,,,,\n\
                   ,Nameless,north,,,,,\n\
                   C3,Changed,north,,Bo,,,\n\
                   C3,Other name,north,,,,,\n";
        let read = read_csv(csv).unwrap();
        assert_eq!(read.len(), 4, "{read:?}");
        let missing = read.iter().find(|r| r.at == "row 5").unwrap();
        assert!(missing.record.as_ref().unwrap_err().contains("external_id"));
        let c1 = read.iter().find(|r| r.at == "rows 2, 3").unwrap();
        let c1 = c1.record.as_ref().unwrap();
        assert_eq!(c1.name, "Baotou Mining");
        assert_eq!(c1.phones, vec!["+86 477 1".to_string()]);
        assert_eq!(c1.contacts.len(), 2);
        assert_eq!(c1.equipment.len(), 2);
        let c3 = read.iter().find(|r| r.at == "rows 6, 7").unwrap();
        assert!(c3.record.as_ref().unwrap_err().contains("row 7"));
        assert!(
            read_csv("id,name\n1,x\n")
                .unwrap_err()
                .contains("unknown column")
        );
        assert!(
            read_csv("external_id,name\n1,x\n")
                .unwrap_err()
                .contains("scope")
        );
    }

    #[test]
    fn json_records_are_checked_one_by_one() {
        let json = r#"[
            {"external_id": "C1", "name": "Baotou", "scope": "north",
             "contacts": [{"name": "Wang"}], "equipment": [{"model": "CAT 320"}]},
            {"external_id": "C2", "name": "", "scope": "north"},
            {"external_id": "C3", "name": "X", "scope": "north", "colour": "red"}
        ]"#;
        let read = read_json(json).unwrap();
        assert!(read[0].record.is_ok());
        assert!(read[1].record.as_ref().unwrap_err().contains("no name"));
        assert!(read[2].record.as_ref().unwrap_err().contains("colour"));
        assert!(read_json("{}").is_err());
    }
}
