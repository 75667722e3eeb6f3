use std::time::Instant;
use fieldsync_client::*;
#[test]
fn probe() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::open(dir.path().join("r.db")).unwrap();
    let ctx = EditCtx::new("x", Role::Rep);
    client.with_store(|s| s.transaction(|tx| {
        for i in 0..10_000usize {
            let new = NewCustomer { org: "o".into(), scope: "s".into(), name: format!("C {:05}", (i * 7919) % 10_000), phone: Some(format!("+86 138 {i:08}")), ..Default::default() };
            tx.create(DocId::new(), |doc, id| fieldsync_core::model::create_customer(doc, id, &new, &ctx))?;
        }
        Ok(())
    })).unwrap();
    for (label, q) in [("exact", "+86 138 00001234"), ("suffix", "138 0000 1234"), ("miss", "999 9999 9999")] {
        let t = Instant::now();
        let mut n = 0;
        for _ in 0..20 { n = client.customers().find_by_phone(q).unwrap().len(); }
        println!("{label}: {:?} per lookup, {n} hits", t.elapsed() / 20);
    }
    let t = Instant::now();
    for _ in 0..10 { assert_eq!(client.customers().list(&CustomerFilter::new()).unwrap().len(), 10_000); }
    println!("typed list of 10k: {:?}", t.elapsed() / 10);
    let t = Instant::now();
    for _ in 0..10 { assert_eq!(client.customers().list(&CustomerFilter::new().page(50, 5000)).unwrap().len(), 50); }
    println!("page of 50 at offset 5000: {:?}", t.elapsed() / 10);
}
