//! Attachments end to end over QUIC against an in-process relay: a photo attached offline on
//! one laptop reaches the relay with the next sync, another laptop sees the entry and its
//! preview with the document and fetches the bytes on demand, verified.

use std::path::Path;
use std::time::Duration;

use fieldsync_client::sync::{SyncConfig, SyncHandle, sync_now};
use fieldsync_client::{BytesState, Client, NewCustomer, NewVisit};
use fieldsync_relay::{Relay, RelayConfig};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

async fn start_relay(dir: &Path, max_file: u64) -> Relay {
    Relay::start(RelayConfig {
        data_dir: dir.join("relay"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        open_enrollment: true,
        attachment_max_file_bytes: max_file,
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts")
}

fn sync_config(relay: &Relay) -> SyncConfig {
    let mut cfg = SyncConfig::new(relay.local_addr().to_string(), relay.fingerprint());
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.poll_interval = Duration::from_millis(200);
    cfg
}

async fn sync(client: &Client, cfg: &SyncConfig) -> fieldsync_client::sync::SyncReport {
    timeout(LIMIT, sync_now(client, cfg))
        .await
        .expect("sync within the time limit")
        .expect("sync succeeds")
}

/// A JPEG photo of `w`×`h` noisy pixels.
fn photo(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut img = image::RgbImage::new(w, h);
    let mut x = seed;
    for p in img.pixels_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *p = image::Rgb([(x >> 16) as u8, (x >> 8) as u8, x as u8]);
    }
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .expect("encode");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_attached_offline_reaches_another_laptop_verified() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path(), 25 << 20).await;
    let cfg = sync_config(&relay);
    let li = Client::open(dir.path().join("li.db")).expect("open");
    let wang = Client::open(dir.path().join("wang.db")).expect("open");

    // Offline: a customer, a visit, and a photo of the worn seal attached to it.
    let customer = li
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Baotou Mining".into(),
            ..Default::default()
        })
        .expect("customer");
    let visit = li
        .visits()
        .create(NewVisit {
            customer_id: customer,
            kind: None,
            notes: Some("loader 950 leaking".into()),
            status: fieldsync_client::VisitStatus::Done,
            at: None,
            location: None,
        })
        .expect("visit");
    let bytes = photo(1200, 900, 7);
    let file = dir.path().join("seal.jpg");
    std::fs::write(&file, &bytes).expect("write");
    let a = li
        .attachments()
        .attach_file(visit, &file, "worn hydraulic seal")
        .expect("attach");
    assert_eq!(a.attachment.media_type, "image/jpeg");
    assert_eq!(a.attachment.size, bytes.len() as u64);
    assert!(a.has_preview, "an image gets a preview");
    // The same photo attached again is stored once.
    li.attachments()
        .attach_file(visit, &file, "same seal")
        .expect("attach again");
    assert_eq!(li.attachments().stored().expect("stored").len(), 1);
    assert_eq!(li.attachments().waiting().expect("waiting").upload_files, 1);

    let report = sync(&li, &cfg).await;
    assert_eq!(report.attachments_uploaded, 1, "{report:?}");
    assert_eq!(report.attachment_bytes_sent, bytes.len() as u64);
    assert_eq!(report.attachments_waiting.upload_files, 0);
    assert!(matches!(
        li.attachments().list(visit).expect("list")[0].bytes,
        BytesState::Here { uploaded: true, .. }
    ));

    // Wang's laptop gets the visit with the entry and its preview, not the bytes.
    sync(&wang, &cfg).await;
    let seen = wang.attachments().list(visit).expect("list");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].bytes, BytesState::NotHere);
    assert!(seen[0].attachment.preview.is_some());
    assert!(wang.attachments().read(a.attachment.hash).is_err());
    wang.attachments()
        .fetch(visit, a.attachment.hash, a.attachment.size)
        .expect("fetch");
    assert_eq!(
        wang.attachments().waiting().expect("w").download_bytes,
        bytes.len() as u64
    );
    let report = sync(&wang, &cfg).await;
    assert_eq!(report.attachments_downloaded, 1, "{report:?}");
    assert_eq!(
        wang.attachments().read(a.attachment.hash).expect("read"),
        bytes
    );
    let out = dir.path().join("out.jpg");
    wang.attachments()
        .save_to(a.attachment.hash, &out)
        .expect("save");
    assert_eq!(std::fs::read(&out).expect("read"), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_file_is_refused_with_the_limit_and_documents_still_sync() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path(), 256 << 10).await;
    let cfg = sync_config(&relay);
    let li = Client::open(dir.path().join("li.db")).expect("open");
    let customer = li
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Hulunbuir Grassland Co-op".into(),
            ..Default::default()
        })
        .expect("customer");
    let big = vec![42u8; 300 << 10];
    li.attachments()
        .attach_bytes(customer, "manual.pdf", None, &big, "")
        .expect("attach");
    let report = sync(&li, &cfg).await;
    assert_eq!(
        report.changes_acked, 2,
        "the customer and the entry reach the relay"
    );
    assert_eq!(report.attachments_uploaded, 0);
    let stored = li.attachments().stored().expect("stored");
    let refused = stored[0].refused.clone().expect("refused");
    assert!(refused.contains("limit"), "{refused}");
    assert!(stored[0].stopped, "not tried again until asked");
    assert_eq!(report.attachments_waiting.upload_files, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_sync_uploads_an_attachment_made_while_connected() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path(), 25 << 20).await;
    let cfg = sync_config(&relay);
    let li = Client::open(dir.path().join("li.db")).expect("open");
    let wang = Client::open(dir.path().join("wang.db")).expect("open");
    let customer = li
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Erdos Coal".into(),
            ..Default::default()
        })
        .expect("customer");
    let handle = SyncHandle::start(li.clone(), cfg.clone());
    let receipt = vec![7u8; 150_000];
    let a = li
        .attachments()
        .attach_bytes(customer, "receipt.pdf", None, &receipt, "signed")
        .expect("attach");
    timeout(LIMIT, async {
        while li.attachments().waiting().expect("w").upload_files > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("uploaded in the background");
    handle.stop().await;
    sync(&wang, &cfg).await;
    wang.attachments()
        .fetch(customer, a.attachment.hash, a.attachment.size)
        .expect("fetch");
    sync(&wang, &cfg).await;
    assert_eq!(
        wang.attachments().read(a.attachment.hash).expect("read"),
        receipt
    );
}

#[test]
fn a_failed_attach_leaves_no_bytes_waiting_and_a_fetch_names_a_document_that_has_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let li = Client::open(dir.path().join("li.db")).expect("open");
    let customer = li
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Ordos Sand".into(),
            ..Default::default()
        })
        .expect("customer");
    // A caption over the limit: the document refuses the entry, and the bytes stored for it
    // do not wait to upload forever.
    let long = "x".repeat(3000);
    assert!(
        li.attachments()
            .attach_bytes(customer, "a.pdf", None, b"%PDF receipt", &long)
            .is_err()
    );
    // An unknown document: the same.
    let nobody = fieldsync_client::DocId::new();
    assert!(
        li.attachments()
            .attach_bytes(nobody, "b.pdf", None, b"%PDF other", "")
            .is_err()
    );
    assert_eq!(li.attachments().stored().expect("stored"), Vec::new());
    assert_eq!(li.attachments().waiting().expect("w").upload_files, 0);
    // A fetch must name a document that refers to the attachment.
    let a = li
        .attachments()
        .attach_bytes(customer, "c.pdf", None, b"%PDF kept", "")
        .expect("attach");
    let other = li
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Other".into(),
            ..Default::default()
        })
        .expect("customer");
    assert!(li.attachments().fetch(other, a.attachment.hash, 9).is_err());
    // Removed before it was uploaded: the relay would never take it, so it stops waiting.
    li.attachments()
        .remove(customer, &a.attachment.id)
        .expect("remove");
    li.attachments().collect().expect("collect");
    assert_eq!(li.attachments().waiting().expect("w").upload_files, 0);
}
