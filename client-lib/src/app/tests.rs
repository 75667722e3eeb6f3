//! The app server over real HTTP on 127.0.0.1: what a hostile page or a rebound DNS name
//! gets (nothing), and the API's round trips and live events as the page uses them.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{App, AppOptions};
use crate::{Client, NewCustomer, NewVisit, VisitStatus};

struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request with exactly these headers (nothing added but `Connection: close`
/// and the body's length).
async fn request(
    app: &App,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Answer {
    let mut s = TcpStream::connect(app.addr()).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("answered in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    Answer {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

fn host(app: &App) -> (&'static str, String) {
    ("Host", format!("127.0.0.1:{}", app.addr().port()))
}

fn origin(app: &App) -> (&'static str, String) {
    ("Origin", format!("http://127.0.0.1:{}", app.addr().port()))
}

fn bearer(app: &App) -> (&'static str, String) {
    ("Authorization", format!("Bearer {}", app.key()))
}

async fn start(dir: &std::path::Path) -> (Client, App) {
    let client = Client::open(dir.join("replica.db")).expect("open");
    let app = App::start(client.clone(), None, AppOptions::default())
        .await
        .expect("app starts");
    (client, app)
}

#[tokio::test]
async fn requests_without_the_key_from_other_origins_or_hosts_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, app) = start(dir.path()).await;
    client
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Erdos Quarry".into(),
            ..Default::default()
        })
        .expect("create");
    assert!(app.addr().ip().is_loopback(), "bound to 127.0.0.1 only");

    // No key: no data. The page's code (the same bytes for everyone) loads, and says to open
    // the printed address.
    for path in ["/api/customers", "/api/session", "/api/events", "/api/sync"] {
        let a = request(&app, "GET", path, &[host(&app)], "").await;
        assert_eq!(a.status, 401, "{path}");
        assert!(!a.body.contains("Erdos"), "{path}");
    }
    for path in ["/", "/app.js", "/key.js"] {
        let a = request(&app, "GET", path, &[host(&app)], "").await;
        assert_eq!(a.status, 200, "{path}");
        assert!(
            !a.body.contains("Erdos") && !a.body.contains(app.key()),
            "{path}"
        );
    }
    // A wrong key; the right key where it is not accepted: as a cookie (browsers send
    // cookies to every port of 127.0.0.1, so another local server would hold it), or in
    // the query of anything but the event stream.
    let wrong = ("Authorization", "Bearer 00".to_string());
    let refused = [
        ("/api/customers".to_string(), vec![host(&app), wrong]),
        (
            "/api/customers".to_string(),
            vec![
                host(&app),
                ("Cookie", format!("fieldsync_key={0}; key={0}", app.key())),
            ],
        ),
        (
            format!("/api/customers?key={}", app.key()),
            vec![host(&app)],
        ),
        (format!("/api/events?key={}x", app.key()), vec![host(&app)]),
    ];
    for (path, headers) in &refused {
        let a = request(&app, "GET", path, headers, "").await;
        assert_eq!(a.status, 401, "{path}");
        assert!(!a.headers.contains("set-cookie"));
    }
    // The launch address keeps the key in its fragment, which is never sent to a server.
    assert!(
        app.url().ends_with(&format!("/#key={}", app.key())),
        "{}",
        app.url()
    );

    // A rebound DNS name, even with the key: refused before anything else.
    for h in [
        "evil.example",
        "127.0.0.1.evil.example",
        "localhost.evil.example",
    ] {
        let a = request(
            &app,
            "GET",
            "/api/customers",
            &[("Host", format!("{h}:{}", app.addr().port())), bearer(&app)],
            "",
        )
        .await;
        assert_eq!(a.status, 421, "{h}");
        assert!(!a.body.contains("Erdos"));
    }
    // Another site's page, even holding the key (it cannot, but the check does not rely on
    // that): refused, and never a CORS header.
    let evil = ("Origin", "http://evil.example".to_string());
    let a = request(
        &app,
        "GET",
        "/api/customers",
        &[host(&app), bearer(&app), evil.clone()],
        "",
    )
    .await;
    assert_eq!(a.status, 403);
    assert!(!a.headers.contains("access-control-allow"));
    let body = r#"{"scope":"north","name":"Injected"}"#;
    let a = request(
        &app,
        "POST",
        "/api/customers",
        &[host(&app), bearer(&app), evil],
        body,
    )
    .await;
    assert_eq!(a.status, 403);
    let cross = ("Sec-Fetch-Site", "cross-site".to_string());
    assert_eq!(
        request(
            &app,
            "GET",
            "/api/customers",
            &[host(&app), bearer(&app), cross],
            ""
        )
        .await
        .status,
        403
    );
    // A change with no Origin at all (a form post from a tool): refused.
    let a = request(
        &app,
        "POST",
        "/api/customers",
        &[host(&app), bearer(&app)],
        body,
    )
    .await;
    assert_eq!(a.status, 403);
    assert!(
        client
            .customers()
            .list(&crate::CustomerFilter::new())
            .expect("list")
            .iter()
            .all(|c| c.name != "Injected"),
        "nothing was written"
    );

    // The page, with the security headers; the data with the key as a header.
    let a = request(&app, "GET", "/", &[host(&app)], "").await;
    assert_eq!(a.status, 200);
    for h in [
        "content-security-policy: default-src 'self'",
        "x-content-type-options: nosniff",
        "frame-ancestors 'none'",
        "cache-control: no-store",
        "referrer-policy: no-referrer",
    ] {
        assert!(a.headers.contains(h), "{h} in {}", a.headers);
    }
    let a = request(
        &app,
        "GET",
        "/api/customers",
        &[host(&app), bearer(&app)],
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains("Erdos Quarry"));
    app.stop().await;
}

#[tokio::test]
async fn the_api_round_trips_the_rust_types_and_streams_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, app) = start(dir.path()).await;
    let auth = [host(&app), bearer(&app), origin(&app)];

    // The page's event stream is open before anything changes.
    let mut events = TcpStream::connect(app.addr()).await.expect("connect");
    let req = format!(
        "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\n\r\n",
        app.addr().port(),
        app.key()
    );
    events.write_all(req.as_bytes()).await.expect("write");

    let a = request(
        &app,
        "POST",
        "/api/customers",
        &auth,
        r#"{"scope":"north","name":"鄂尔多斯矿业","phone":"+86 477 555 0101","contacts":[{"name":"王伟"}]}"#,
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let id = a.json()["id"].as_str().expect("id").to_string();

    // Found by name and by the phone number in another notation.
    for q in ["%E9%84%82%E5%B0%94", "477-555-0101", "%2B864775550101"] {
        let a = request(&app, "GET", &format!("/api/customers?q={q}"), &auth, "").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json()[0]["id"], id, "{q}: {}", a.body);
    }

    // Edits are the Rust edit enums; an empty item id is filled in.
    let a = request(
        &app,
        "POST",
        &format!("/api/customers/{id}/edits"),
        &auth,
        r#"[{"set":["industry","mining"]},{"add_equipment":["",{"model":"CAT 797F","serial":"LAJ00412"}]}]"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let customer = a.json();
    assert_eq!(customer["industry"], "mining");
    assert_eq!(customer["equipment"][0]["model"], "CAT 797F");
    assert!(
        !customer["equipment"][0]["id"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    );
    let contact = customer["contacts"][0]["id"]
        .as_str()
        .expect("contact")
        .to_string();

    // A visit with its details, and a quote with lines: one request each.
    let body = serde_json::json!({
        "visit": {"customer_id": id, "kind": "sales_call", "status": "done", "notes": "Haul truck tyres"},
        "edits": [
            {"add_contact_met": contact},
            {"set_satisfaction": 4},
            {"add_task": ["", {"title": "Send the tyre quote", "assignee": client.identity().expect("identity").author}]},
        ],
    });
    let a = request(&app, "POST", "/api/visits", &auth, &body.to_string()).await;
    assert_eq!(a.status, 201, "{}", a.body);
    // A visit whose details the model refuses is not written at all (a retried save leaves
    // no bare visit behind).
    let bad = serde_json::json!({
        "visit": {"customer_id": id, "status": "done"},
        "edits": [{"set_satisfaction": 9}],
    });
    let a = request(&app, "POST", "/api/visits", &auth, &bad.to_string()).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("satisfaction")
    );
    assert_eq!(
        client
            .visits()
            .for_customer(id.parse::<crate::DocId>().expect("id").into())
            .expect("visits")
            .len(),
        1
    );
    let body = serde_json::json!({
        "quote": {"customer_id": id, "currency": "CNY", "quote_no": "Q-7"},
        "edits": [
            {"add_line": ["", {"sku": "TYRE-59", "qty": 2, "unit_price_minor": 1_250_000, "discount_bp": 500}]},
            {"add_line": ["", {"sku": "SVC", "qty": 1, "unit_price_minor": 80_000}]},
        ],
    });
    let a = request(&app, "POST", "/api/quotes", &auth, &body.to_string()).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let quote = a.json()["id"].as_str().expect("id").to_string();
    let a = request(&app, "GET", &format!("/api/quotes/{quote}"), &auth, "").await;
    assert_eq!(a.json()["total"]["amount_minor"], 2_375_000 + 80_000);

    // A rep may not approve: 403 with the model's reason, nothing written.
    let a = request(
        &app,
        "POST",
        &format!("/api/quotes/{quote}/edits"),
        &auth,
        r#"["submit"]"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = request(
        &app,
        "POST",
        &format!("/api/quotes/{quote}/edits"),
        &auth,
        r#"[{"approve":null}]"#,
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.json()["code"], "refused");
    assert_eq!(
        request(&app, "GET", &format!("/api/quotes/{quote}"), &auth, "")
            .await
            .json()["status"],
        "submitted"
    );

    // Customer 360 has it all, and what waits for the relay.
    let a = request(&app, "GET", &format!("/api/customers/{id}"), &auth, "").await;
    let c360 = a.json();
    assert_eq!(c360["visits"].as_array().map(Vec::len), Some(1));
    assert_eq!(c360["quotes"][0]["quote_no"], "Q-7");
    assert_eq!(c360["open_tasks"][0]["title"], "Send the tyre quote");
    assert_eq!(c360["price_history"].as_array().map(Vec::len), Some(2));
    assert_eq!(c360["timeline"].as_array().map(Vec::len), Some(2));
    assert_eq!(c360["changed"]["waiting"].as_array().map(Vec::len), Some(3));
    assert_eq!(c360["changed"]["waiting"][0]["kind"], "quote");

    // Today: the task; a planned care visit is a greeting; the customer was just visited.
    let greet = client
        .visits()
        .create(NewVisit {
            customer_id: id.parse::<crate::DocId>().expect("id").into(),
            kind: Some("care".into()),
            status: VisitStatus::Planned,
            at: Some(fieldsync_core::ids::now_millis() + 86_400_000),
            notes: None,
            location: None,
        })
        .expect("visit");
    let today = request(&app, "GET", "/api/today", &auth, "").await.json();
    assert_eq!(today["open_tasks"][0]["title"], "Send the tyre quote");
    assert_eq!(today["greetings"][0]["id"], greet.to_string());
    assert_eq!(today["not_visited"].as_array().map(Vec::len), Some(0));

    // Bad input is a clear 400, never a panic.
    for (path, body) in [
        ("/api/customers", "{"),
        ("/api/customers/not-an-id/edits", "[]"),
        ("/api/visits", r#"{"visit":{}}"#),
        (
            "/api/quotes/00000000-0000-0000-0000-000000000000/edits",
            r#"["nonsense"]"#,
        ),
    ] {
        let a = request(&app, "POST", path, &auth, body).await;
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        assert!(a.json()["error"].is_string());
    }
    let a = request(
        &app,
        "GET",
        "/api/visits/00000000-0000-0000-0000-000000000000",
        &auth,
        "",
    )
    .await;
    assert_eq!(a.status, 404);

    // The stream announced the changes (batched), as `docs` events.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(&quote) {
        let n = tokio::time::timeout_at(deadline, events.read(&mut buf))
            .await
            .expect("the quote's event in time")
            .expect("read");
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"));
    assert!(seen.contains("event: docs"));
    assert!(seen.contains(r#""origin":"local""#));

    // The sync centre works without a relay: offline, with what waits.
    let sync = request(&app, "GET", "/api/sync", &auth, "").await.json();
    assert_eq!(sync["state"], "offline");
    assert!(sync["outbox"]["changes"].as_u64().unwrap_or(0) >= 5);
    let a = request(&app, "GET", "/api/today?idle_days=abc", &auth, "").await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.json()["error"].is_string());

    // A client that never finishes its request does not hold the stop up for long.
    let mut stuck = TcpStream::connect(app.addr()).await.expect("connect");
    stuck
        .write_all(
            format!(
                "GET /api/session HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
                app.addr().port()
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    // Stopping ends the open stream.
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("stops with a stream open");
}

#[tokio::test]
async fn photos_upload_show_a_preview_and_other_files_never_run_in_the_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, app) = start(dir.path()).await;
    let auth = [host(&app), bearer(&app), origin(&app)];
    let customer = client
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Baotou Mining".into(),
            ..Default::default()
        })
        .expect("create");
    let visit = client
        .visits()
        .create(NewVisit {
            customer_id: customer,
            kind: None,
            notes: None,
            status: VisitStatus::Done,
            at: None,
            location: None,
        })
        .expect("visit");
    let mut png = Vec::new();
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("png");
    let base = format!("/api/docs/{visit}/attachments");
    let a = request_bytes(
        &app,
        &format!("{base}?name=seal.png&caption=worn%20seal"),
        &auth,
        &png,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let entry = a.json()["attachment"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(a.json()["attachment"]["caption"], "worn seal");
    assert_eq!(a.json()["has_preview"], true);
    let list = request(&app, "GET", &base, &auth, "").await.json();
    assert_eq!(list[0]["attachment"]["name"], "seal.png");
    assert!(
        list[0]["attachment"]["preview"].is_null(),
        "previews stay out of lists"
    );
    let p = request(&app, "GET", &format!("{base}/{entry}/preview"), &auth, "").await;
    assert_eq!(p.status, 200);
    assert!(p.headers.contains("content-type: image/jpeg"));
    let f = request(&app, "GET", &format!("{base}/{entry}"), &auth, "").await;
    assert_eq!(f.status, 200);
    assert!(f.headers.contains("content-type: image/png"));
    assert!(f.headers.contains("content-disposition: inline"));

    // An HTML file is someone else's script: downloaded, sandboxed, never run as the app.
    let html = b"<script>fetch('/api/customers')</script>";
    let a = request_bytes(&app, &format!("{base}?name=page.html"), &auth, html).await;
    let entry = a.json()["attachment"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let f = request(&app, "GET", &format!("{base}/{entry}"), &auth, "").await;
    assert!(
        f.headers.contains("content-type: application/octet-stream"),
        "{}",
        f.headers
    );
    assert!(f.headers.contains("content-disposition: attachment"));
    assert!(f.headers.contains("content-security-policy: sandbox"));
    // Asking for a file already here changes nothing; an unknown entry is a 404.
    let f = request(&app, "POST", &format!("{base}/{entry}/fetch"), &auth, "").await;
    assert_eq!(f.status, 202, "{}", f.body);
    let f = request(&app, "POST", &format!("{base}/nope/fetch"), &auth, "").await;
    assert_eq!(f.status, 404);
    // A name with a folder in it is refused.
    let a = request_bytes(&app, &format!("{base}?name=..%2Fx.png"), &auth, &png).await;
    assert_eq!(a.status, 400);
    app.stop().await;
}

/// A POST whose body is raw bytes.
async fn request_bytes(app: &App, path: &str, headers: &[(&str, String)], body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(app.addr()).await.expect("connect");
    let mut req = format!("POST {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("answered in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Answer {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status"),
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}
