//! A document that grew past what relays and laptops load, trimmed by IT, over real QUIC on
//! 127.0.0.1: `fieldsync-relay doc trim` replaces its history with its current state, and every
//! laptop takes the new history at its next sync — one that had skipped the document loads it,
//! one that held the old history swaps it, and one with an edit the relay had not stored yet
//! carries that edit over, so nothing typed offline is lost.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ScalarValue};
use fieldsync_client::sync::sync_now;
use fieldsync_client::{Client, NewCustomer};
use fieldsync_core::model::rewrite::parse_path;
use fieldsync_relay::RelayStore;

mod support;

use support::{open_relay, sync_config as config};

/// Runs an admin command on the running relay's store, as `fieldsync-relay` would.
async fn admin<T: Send + 'static>(
    store: &RelayStore,
    f: impl FnOnce(&RelayStore) -> T + Send + 'static,
) -> T {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_document_reaches_every_laptop_and_keeps_unsent_edits() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = open_relay(dir.path()).await;
    let writer = Client::open(dir.path().join("writer.db")).expect("replica");
    let reader = Client::open(dir.path().join("reader.db")).expect("replica");
    let id = writer
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Big Co".into(),
            ..Default::default()
        })
        .expect("create");
    sync_now(&writer, &config(&relay)).await.expect("upload");
    sync_now(&reader, &config(&relay)).await.expect("download");
    relay.shutdown().await.expect("stop");

    // The relay's copy grows past what anyone loads (as one stored before budgets existed, or
    // restored from a damaged backup): 600,000 list elements under a key the model ignores.
    let db_path = dir.path().join("relay").join("relay.db");
    let db = rusqlite::Connection::open(&db_path).expect("db");
    let stored: Vec<u8> = db
        .query_row(
            "SELECT snapshot FROM docs WHERE doc_id = ?1",
            [id.0.as_bytes().to_vec()],
            |r| r.get(0),
        )
        .expect("stored");
    let mut big = AutoCommit::load(&stored).expect("load");
    let list = big.put_object(ROOT, "bloat", ObjType::List).expect("list");
    big.splice(&list, 0, 0, std::iter::repeat_n(ScalarValue::Null, 600_000))
        .expect("splice");
    big.commit();
    let raw: usize = big
        .get_changes(&[])
        .iter()
        .map(|c| c.raw_bytes().len())
        .sum();
    db.execute(
        "UPDATE docs SET snapshot = ?2, heads = ?3, raw_bytes = ?4 WHERE doc_id = ?1",
        rusqlite::params![
            id.0.as_bytes().to_vec(),
            big.save(),
            big.get_heads()
                .iter()
                .flat_map(|h| h.0)
                .collect::<Vec<u8>>(),
            raw as i64
        ],
    )
    .expect("grow");
    drop(db);
    let relay = open_relay(dir.path()).await;

    // Meanwhile the writer renames it offline; a new laptop cannot load it and skips it.
    writer
        .customers()
        .set_name(id, "Big Co Holdings")
        .expect("edit");
    let fresh = Client::open(dir.path().join("fresh.db")).expect("replica");
    sync_now(&fresh, &config(&relay)).await.expect("download");
    assert!(
        fresh
            .skipped()
            .expect("skipped")
            .iter()
            .any(|s| s.doc_id == id),
        "the new laptop skips it"
    );
    let report = sync_now(&writer, &config(&relay))
        .await
        .expect("sync goes on");
    assert_eq!(
        report.changes_rejected, 0,
        "nothing quarantined: {report:?}"
    );
    assert_eq!(writer.outbox_len().expect("outbox"), 1, "the rename waits");

    // IT finds it and trims it while the relay runs.
    let check = admin(relay.store(), fieldsync_relay::doc_check::check_documents)
        .await
        .expect("check");
    assert_eq!(check.problems.len(), 1, "{check:?}");
    let dry = admin(relay.store(), move |s| {
        fieldsync_relay::doc_trim::trim_document(s, id.doc_id(), &[parse_path("bloat")], true)
    })
    .await
    .expect("dry run");
    assert_eq!(dry.seq, None, "a dry run writes nothing");
    let trimmed = admin(relay.store(), move |s| {
        fieldsync_relay::doc_trim::trim_document(s, id.doc_id(), &[parse_path("bloat")], false)
    })
    .await
    .expect("trim");
    assert!(trimmed.seq.is_some(), "{trimmed:?}");
    assert!(
        trimmed.after_bytes < 4096 && trimmed.before_bytes > trimmed.after_bytes,
        "{trimmed:?}"
    );
    let check = admin(relay.store(), fieldsync_relay::doc_check::check_documents)
        .await
        .expect("check");
    assert!(check.problems.is_empty(), "{check:?}");

    // The writer takes the new history and carries its rename over (sent at its next sync).
    sync_now(&writer, &config(&relay)).await.expect("replace");
    sync_now(&writer, &config(&relay)).await.expect("upload");
    assert_eq!(
        writer.outbox_len().expect("outbox"),
        0,
        "the rename is stored"
    );
    assert!(
        writer
            .with_store(|s| s.quarantine())
            .expect("quarantine")
            .is_empty()
    );
    // The laptop that skipped it loads it; the one with the old history swaps it.
    for laptop in [&fresh, &reader] {
        sync_now(laptop, &config(&relay)).await.expect("download");
        assert!(laptop.skipped().expect("skipped").is_empty());
        assert_eq!(
            laptop.customers().get(id).expect("readable").name,
            "Big Co Holdings"
        );
    }
    let heads = |c: &Client| c.with_store(|s| s.heads(id.doc_id())).expect("heads");
    assert_eq!(heads(&reader), heads(&writer), "one history everywhere");
    assert_eq!(heads(&fresh), heads(&writer), "one history everywhere");
    // Later edits flow as usual on the new history.
    reader
        .customers()
        .set_name(id, "Big Co Group")
        .expect("edit");
    sync_now(&reader, &config(&relay)).await.expect("upload");
    sync_now(&writer, &config(&relay)).await.expect("download");
    assert_eq!(
        writer.customers().get(id).expect("readable").name,
        "Big Co Group"
    );
}
