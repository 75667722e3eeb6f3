//! The main demonstration: a relay and two reps' laptops on 127.0.0.1.
//!
//! IT enrols both laptops (one-time tokens, as `fieldsync-relay device enroll` prints them and
//! `fieldsync init --token` redeems them). Both laptops start from the same customer, go
//! offline, edit it (different fields, and one field both), log a visit and draft a quote;
//! then they reconnect in turn, the relay is restarted in the middle, and both end with
//! identical documents and a listed conflict.
//!
//! Run: `cargo run -p fieldsync-examples --example converge`

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fieldsync_client::sync::{EnrolToken, SyncConfig, enrol_replica, load_credential, sync_now};
use fieldsync_client::{
    Client, ContactInput, LineInput, NewCustomer, NewQuote, NewVisit, Role, VisitStatus,
};
use fieldsync_relay::{Relay, RelayConfig};

fn relay_config(dir: &std::path::Path, listen: SocketAddr) -> RelayConfig {
    RelayConfig {
        data_dir: dir.to_path_buf(),
        listen,
        ..RelayConfig::default()
    }
}

/// IT enrols a rep's laptop for `north-mines`; the laptop redeems the token and from then on
/// presents the credential it stored next to its replica.
async fn enrol(relay: &Relay, name: &str, client: &Client) -> Result<SyncConfig> {
    let secret = relay.store().create_enrolment(
        name,
        Role::Rep,
        &["north-mines".to_string()],
        None,
        Duration::from_secs(86_400),
    )?;
    let token = EnrolToken::new(
        &relay.local_addr().to_string(),
        relay.fingerprint(),
        &secret,
    )?;
    let enrolled = enrol_replica(client, &token, Duration::from_secs(10)).await?;
    println!(
        "  {name}: enrolled as {} in {}, credential in {}",
        enrolled.role,
        enrolled.scopes.join(","),
        enrolled.credential_file.display()
    );
    let mut cfg = SyncConfig::new(enrolled.relay, enrolled.pin);
    cfg.credential = load_credential(client)?;
    Ok(cfg)
}

async fn sync(name: &str, client: &Client, cfg: &SyncConfig) -> Result<()> {
    let r = sync_now(client, cfg)
        .await
        .with_context(|| format!("{name} sync"))?;
    let nothing = || "nothing new".to_string();
    println!(
        "  {name:<6} synced in {} ms: sent {}; received {} ({} B up, {} B down)",
        r.duration.as_millis(),
        r.sent_documents.in_words().unwrap_or_else(nothing),
        r.received_documents.in_words().unwrap_or_else(nothing),
        r.bytes_sent,
        r.bytes_received,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let relay_dir = tmp.path().join("relay");
    let relay = Relay::start(relay_config(&relay_dir, "127.0.0.1:0".parse()?)).await?;
    let addr = relay.local_addr();
    println!(
        "relay listening on {addr}, certificate fingerprint {}",
        relay.fingerprint()
    );
    let alice = Client::open(tmp.path().join("alice.db"))?;
    let bob = Client::open(tmp.path().join("bob.db"))?;

    println!("\n0. IT enrols both laptops with one-time tokens");
    let alice_cfg = enrol(&relay, "Alice laptop", &alice).await?;
    let bob_cfg = enrol(&relay, "Bob laptop", &bob).await?;

    println!("\n1. Alice creates a customer and syncs; Bob syncs and gets it");
    let customer = alice.customers().create(NewCustomer {
        scope: "north-mines".into(),
        name: "Baotou Mining Co".into(),
        phone: Some("+86 472 555 0101".into()),
        industry: Some("mining".into()),
        ..Default::default()
    })?;
    sync("alice", &alice, &alice_cfg).await?;
    sync("bob", &bob, &bob_cfg).await?;
    ensure!(bob.customers().get(customer)?.name == "Baotou Mining Co");

    println!("\n2. Both go offline for a week and edit the same customer");
    alice.customers().add_phone(customer, "+86 138 0047 2001")?;
    alice
        .customers()
        .set_name(customer, "Baotou Mining Group")?;
    let visit = alice.visits().create(NewVisit {
        customer_id: customer,
        kind: Some("sales_call".into()),
        notes: Some("Met the purchasing manager at the pit; two loaders need replacing.".into()),
        status: VisitStatus::Done,
        at: None,
        location: Some("Bayan Obo pit 3".into()),
    })?;
    let quote = alice.quotes().create(NewQuote {
        customer_id: customer,
        currency: "CNY".into(),
        quote_no: Some("AL-0001".into()),
        valid_until: None,
    })?;
    alice.quotes().add_line(
        quote,
        LineInput {
            sku: Some("WL-980".into()),
            description: Some("Wheel loader".into()),
            qty: Some(2),
            unit_price_minor: Some(125_000_000),
            discount_bp: Some(300),
            sort_key: None,
        },
    )?;
    bob.customers().add_contact(
        customer,
        ContactInput {
            name: Some("Wang Fang".into()),
            title: Some("Purchasing".into()),
            is_purchaser: Some(true),
            ..Default::default()
        },
    )?;
    bob.customers()
        .set_name(customer, "Baotou Mining Co., Ltd.")?;
    println!(
        "  alice outbox: {} changes, bob outbox: {} changes",
        alice.outbox_len()?,
        bob.outbox_len()?
    );

    println!("\n3. Bob reconnects first; then the relay restarts; then Alice, then Bob again");
    sync("bob", &bob, &bob_cfg).await?;
    relay.shutdown().await?;
    let relay = Relay::start(relay_config(&relay_dir, addr)).await?;
    println!("  relay restarted on {}", relay.local_addr());
    sync("alice", &alice, &alice_cfg).await?;
    sync("bob", &bob, &bob_cfg).await?;

    println!("\n4. Both replicas hold the same documents");
    for id in [customer.doc_id(), visit.doc_id(), quote.doc_id()] {
        ensure!(
            alice.document(id)? == bob.document(id)?,
            "document {id} differs"
        );
    }
    let c = bob.customers().get(customer)?;
    println!(
        "  customer: {} | phones {} | contacts {} | visits {} | quote total {:.2} {}",
        c.name,
        c.phones.len(),
        c.contacts.len(),
        bob.visits().for_customer(customer)?.len(),
        bob.quotes().get(quote)?.total.amount_minor as f64 / 100.0,
        bob.quotes().get(quote)?.total.currency,
    );
    ensure!(
        alice.outbox_len()? == 0 && bob.outbox_len()? == 0,
        "outboxes must be empty"
    );
    for conflict in alice.conflicts()? {
        // Values as a person reads them: text without JSON quotes, other values as JSON.
        let values: Vec<String> = conflict
            .values
            .iter()
            .map(|v| {
                v.as_str()
                    .map_or_else(|| v.to_string(), |s| format!("\u{201c}{s}\u{201d}"))
            })
            .collect();
        println!(
            "  both renames are kept as a conflict on the customer's {}: {} (shown: the first; \
             `fieldsync resolve` picks one)",
            conflict.path,
            values.join(" vs ")
        );
    }
    ensure!(
        !alice.conflicts()?.is_empty(),
        "the concurrent rename must be listed"
    );
    relay.shutdown().await?;
    println!("\nconverged: every edit from both laptops is on both laptops");
    Ok(())
}
