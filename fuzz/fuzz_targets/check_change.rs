//! Arbitrary bytes as an uploaded change, validated against an empty document and against a
//! valid customer written by the sending device (so mutations of real changes get deep).
#![no_main]

use std::sync::OnceLock;

use automerge::{ActorId, AutoCommit};
use fieldsync_core::model::{EditCtx, NewCustomer, create_customer};
use fieldsync_core::protocol::{DeviceInfo, check_change};
use fieldsync_core::{DocId, Role};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

const DEVICE: Uuid = Uuid::from_u128(0x0f5a_11ce);

fn base() -> &'static (DocId, AutoCommit) {
    static BASE: OnceLock<(DocId, AutoCommit)> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut actor = DEVICE.as_bytes().to_vec();
        actor.extend_from_slice(&[1; 8]);
        let mut doc = AutoCommit::new().with_actor(ActorId::from(actor));
        let id = DocId::new();
        let new = NewCustomer {
            org: "acme".into(),
            scope: "north".into(),
            name: "Fuzz Co".into(),
            ..Default::default()
        };
        create_customer(&mut doc, id, &new, &EditCtx::new("fuzz", Role::Rep)).expect("create");
        doc.commit();
        (id, doc)
    })
}

fuzz_target!(|data: &[u8]| {
    let sender = DeviceInfo {
        device_id: DEVICE,
        name: "fuzz".into(),
        role: Role::Rep,
        scopes: vec!["*".into()],
    };
    let (id, doc) = base();
    for mut d in [AutoCommit::new(), doc.clone()] {
        if let Ok(_) = check_change(
            &mut d,
            *id,
            data,
            &sender,
            false,
            &|_| None,
            None,
            &|_| None,
            &|_, _| false,
        ) {
            // An accepted change must leave a readable document.
            fieldsync_core::model::read_document(&d).expect("accepted but unreadable");
            let _ = fieldsync_core::model::conflicts(&d);
        }
    }
});
