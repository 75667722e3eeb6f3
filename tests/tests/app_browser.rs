//! The rep's app (`fieldsync app`) in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, the `fantoccini` crate), against real processes — a `fieldsync-relay`,
//! laptops enrolled with its tokens, and one `fieldsync app` per rep, each rep with a browser
//! profile of their own.
//!
//! - A visit and a quote made while the relay is down (killed) wait in the sync centre's
//!   outbox; once the relay is back they appear in another rep's open Customer 360 page, live,
//!   without a reload.
//! - A customer in a territory the laptop was not granted is refused by the relay: the sync
//!   centre lists it with the relay's reason; IT grants the territory, the rep presses retry,
//!   the refusal goes and the relay has the customer.
//! - Two reps set the same field while the relay is down: both sync centres list the conflict
//!   with both values; one rep keeps the other's value with a click, and both replicas end with
//!   that value and no conflict.
//! - The app answers no data without its key or on another name (a rebound DNS name: 421), a
//!   page of another origin cannot read its API or change anything through it, and the key
//!   moves from the launch address's fragment into the tab and never reaches another server
//!   on 127.0.0.1 (no cookie exists).
//!
//! Every screen is photographed along the way (`FIELDSYNC_SCREENSHOTS=DIR` keeps them; else
//! they go to the test's temporary directory): Today, search, Customer 360, the visit and quote
//! forms, a quote, the sync centre with its outbox waiting, with a refusal and with a conflict,
//! and Today and Customer 360 in Chinese.
//!
//! The page is driven only through its test hooks (`data-test`, `data-nav`, form field names,
//! `body[data-view]` and `body[data-ready]`), which the front end promises to keep. Waits poll
//! the page (30 s at most, then fail naming what was awaited); nothing sleeps for a fixed time.
//! The tests run one at a time: each starts up to two browsers, two apps and a relay, load
//! enough for a small CI machine. Every process is stopped at the end, also when a test fails.
//!
//! Needs Debian's `chromium` and `chromium-driver` (the tests fail saying so when missing).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use fieldsync_tests::browser::ChromeDriver;
use fieldsync_tests::procs::{self, AppProcess, RelayProcess};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// The longest any one wait lasts.
const WAIT: Duration = Duration::from_secs(30);
const DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// The reps' territory.
const SCOPE: &str = "north-mines";
/// The customer every scenario works on.
const ORDOS: &str = "鄂尔多斯矿业";

/// One scenario at a time (see the module docs); a failed one does not stop the others.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(d.as_millis()).expect("milliseconds fit")
}

/// Logs how far a scenario got, and when (for reading a slow or failed run).
fn mark(started: Instant, what: &str) {
    eprintln!("[{:6.1}s] {what}", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// The processes: a relay, laptops, one app per rep, chromedriver.

/// What a scenario runs. Dropped, it stops the relay, then the driver with every browser
/// (fields drop in order), then removes the temporary directory.
struct World {
    driver: ChromeDriver,
    relay: Option<RelayProcess>,
    relay_addr: SocketAddr,
    relay_data: PathBuf,
    shots: PathBuf,
    tmp: tempfile::TempDir,
}

impl World {
    /// Chromedriver, and a relay that serves enrolled devices only.
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let driver = ChromeDriver::start(&tmp.path().join("chromedriver.log"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let relay_data = tmp.path().join("relay");
        let relay_addr = procs::free_udp_addr().expect("a free UDP port");
        let relay =
            RelayProcess::start(&relay_data, relay_addr, &[]).expect("the relay process starts");
        // A relative directory is taken from the workspace root (tests run in `tests/`).
        let shots = match std::env::var_os("FIELDSYNC_SCREENSHOTS") {
            Some(d) => procs::workspace_root().join(d),
            None => tmp.path().join("screenshots"),
        };
        std::fs::create_dir_all(&shots).expect("the screenshot directory");
        Self {
            relay_addr: relay.addr,
            relay: Some(relay),
            driver,
            relay_data,
            shots,
            tmp,
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// `fieldsync-relay ARGS --data RELAY`, which must succeed; returns its stdout.
    fn relay_cli(&self, args: &[&str]) -> String {
        let out = procs::relay_command(&self.relay_data, args)
            .expect("the relay binary")
            .output()
            .expect("run fieldsync-relay");
        assert!(
            out.status.success(),
            "fieldsync-relay {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// IT enrols a laptop (`fieldsync-relay device enroll`) and the rep redeems the token
    /// (`fieldsync init --token … --name AUTHOR`); returns the laptop's data directory.
    fn laptop(
        &self,
        dir: &str,
        device: &str,
        author: &str,
        role: &str,
        scopes: &[&str],
    ) -> PathBuf {
        let addr = self.relay_addr.to_string();
        let mut args = vec![
            "device",
            "enroll",
            "--name",
            device,
            "--role",
            role,
            "--relay-addr",
            &addr,
        ];
        for s in scopes {
            args.extend(["--scope", s]);
        }
        let printed = self.relay_cli(&args);
        let token = printed.lines().last().expect("the token line").trim();
        let data = self.dir().join(dir);
        let out = procs::laptop_command(&data)
            .expect("the fieldsync binary")
            .args(["init", "--token", token, "--name", author])
            .output()
            .expect("run fieldsync init");
        assert!(
            out.status.success(),
            "fieldsync init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        data
    }

    /// The relay dies (SIGKILL): laptops are offline.
    fn kill_relay(&mut self) {
        if let Some(r) = self.relay.take() {
            r.kill9();
        }
    }

    /// The relay starts again on the same port and data directory.
    fn restart_relay(&mut self) {
        assert!(self.relay.is_none(), "the relay is already running");
        let r = RelayProcess::start(&self.relay_data, self.relay_addr, &[])
            .expect("the relay restarts");
        assert_eq!(r.addr, self.relay_addr, "the same port");
        self.relay = Some(r);
    }

    /// Starts the app on `data` and opens it in a browser of its own.
    async fn rep(&self, who: &str, data: &Path) -> Rep {
        let app = AppProcess::start(data, &[]).unwrap_or_else(|e| panic!("{who}'s app: {e:#}"));
        let web = self.browser(who, &[]).await;
        let rep = Rep {
            who: who.to_string(),
            app,
            web,
            shots: self.shots.clone(),
        };
        rep.web
            .goto(&rep.app.url)
            .await
            .expect("the launch address opens");
        rep.ready("today").await;
        rep
    }

    /// A browser session with a profile of its own (`extra`: more Chromium arguments).
    async fn browser(&self, who: &str, extra: &[&str]) -> Browser {
        let profile = self.dir().join(format!("profile-{who}"));
        ClientBuilder::new(HttpConnector::new())
            .capabilities(self.driver.capabilities(&profile, extra))
            .connect(&self.driver.url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "a Chromium session for {who}: {e} (chromedriver log: {})",
                    std::fs::read_to_string(&self.driver.log).unwrap_or_default()
                )
            })
    }
}

impl Drop for World {
    /// The relay stops cleanly (SIGTERM); the driver and its browsers, then the temporary
    /// directory, go when the fields drop.
    fn drop(&mut self) {
        if let Some(r) = self.relay.take() {
            r.stop();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A rep: their app and their browser.

struct Rep {
    who: String,
    app: AppProcess,
    web: Browser,
    shots: PathBuf,
}

/// Whether a value the page returned counts as "yes".
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Only the digits of a text: "CNY 1,234.56" → "123456".
fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

impl Rep {
    /// Runs `script` (a function body, with `arguments`) in the page.
    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.web
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{}'s page: {script}: {e}", self.who))
    }

    /// Polls `script` until it returns something truthy, which it returns; fails after
    /// [`WAIT`] saying `what` was awaited and what the page showed.
    async fn wait(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut last_error = None;
        loop {
            match self.web.execute(script, args.clone()).await {
                Ok(v) if truthy(&v) => return v,
                Ok(_) => {}
                // A navigation in progress.
                Err(e) => last_error = Some(e.to_string()),
            }
            if Instant::now() > deadline {
                panic!(
                    "{} waited {WAIT:?} for {what}; last error: {last_error:?}; the page: {}",
                    self.who,
                    self.describe().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where the page is and what it shows, for failure messages.
    async fn describe(&self) -> String {
        let script = "const b = document.body; \
            const errors = [...document.querySelectorAll('[data-test=\"error\"]')] \
              .map(e => e.innerText); \
            const failed = performance.getEntriesByType('resource') \
              .filter(r => r.responseStatus >= 400).map(r => `${r.name} ${r.responseStatus}`); \
            return JSON.stringify({url: location.href, view: b && b.dataset.view, \
              ready: b && b.dataset.ready, errors, failed_loads: failed, \
              text: b ? b.innerText.slice(0, 1500) : ''});";
        match self.web.execute(script, vec![]).await {
            Ok(Value::String(s)) => s,
            Ok(v) => v.to_string(),
            Err(e) => format!("(unreadable: {e})"),
        }
    }

    /// Waits until the page rendered view `view` and is ready.
    async fn ready(&self, view: &str) {
        self.wait(
            &format!("the {view} view to be ready"),
            "return document.body && document.body.dataset.ready === 'true' \
               && document.body.dataset.view === arguments[0];",
            vec![json!(view)],
        )
        .await;
    }

    /// Waits until the page is ready again (after an action that re-renders the same view).
    async fn settled(&self) {
        self.wait(
            "the page to be ready",
            "return document.body && document.body.dataset.ready === 'true';",
            vec![],
        )
        .await;
    }

    /// Waits for an element.
    async fn present(&self, css: &str) {
        self.wait(
            &format!("{css} to be shown"),
            "return document.querySelector(arguments[0]) !== null;",
            vec![json!(css)],
        )
        .await;
    }

    async fn count(&self, css: &str) -> u64 {
        self.js(
            "return document.querySelectorAll(arguments[0]).length;",
            vec![json!(css)],
        )
        .await
        .as_u64()
        .unwrap_or(0)
    }

    /// The text of the first element matching `css` ("" if none).
    async fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            vec![json!(css)],
        )
        .await
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    /// Clicks the first element matching `css`, scrolled to the middle of the window (the
    /// header is sticky).
    async fn click(&self, css: &str) {
        self.present(css).await;
        self.js(
            "document.querySelector(arguments[0]).scrollIntoView({block: 'center'});",
            vec![json!(css)],
        )
        .await;
        let el = self
            .web
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: no {css}: {e}", self.who));
        el.click()
            .await
            .unwrap_or_else(|e| panic!("{}: clicking {css}: {e}", self.who));
    }

    /// Follows a navigation link (`a[data-nav=…]`) and waits for its view.
    async fn nav(&self, nav: &str, view: &str) {
        self.click(&format!("a[data-nav=\"{nav}\"]")).await;
        self.ready(view).await;
    }

    /// Types `text` into the field `css` (emptied first), as keystrokes.
    async fn type_into(&self, css: &str, text: &str) {
        self.type_into_nth(css, 0, text).await;
    }

    /// Types `text` into the `n`-th field matching `css` (from 0; emptied first).
    async fn type_into_nth(&self, css: &str, n: usize, text: &str) {
        self.wait(
            &format!("{} fields {css}", n + 1),
            "return document.querySelectorAll(arguments[0]).length > arguments[1];",
            vec![json!(css), json!(n)],
        )
        .await;
        let all = self
            .web
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: no {css}: {e}", self.who));
        let el = all
            .get(n)
            .unwrap_or_else(|| panic!("{}: no field {n} of {css}", self.who));
        el.clear()
            .await
            .unwrap_or_else(|e| panic!("{}: clearing {css}: {e}", self.who));
        el.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("{}: typing into {css}: {e}", self.who));
    }

    /// Chooses `value` in the `<select>` `css`.
    async fn choose(&self, css: &str, value: &str) {
        self.present(css).await;
        let el = self
            .web
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: no {css}: {e}", self.who));
        el.select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("{}: choosing {value} in {css}: {e}", self.who));
    }

    /// Sets a field the keyboard does not fill portably (a date input), with an input event.
    async fn set_value(&self, css: &str, value: &str) {
        self.present(css).await;
        self.js(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1]; \
             e.dispatchEvent(new Event('input', {bubbles: true})); \
             e.dispatchEvent(new Event('change', {bubbles: true}));",
            vec![json!(css), json!(value)],
        )
        .await;
    }

    /// Searches customers for `name` on the Customers view and opens the one with `id`.
    async fn open_customer(&self, name: &str, id: &str) {
        self.nav("customers", "customers").await;
        self.type_into("input[data-test=\"search\"]", name).await;
        let row = format!("[data-test=\"customer-row\"][data-id=\"{id}\"]");
        self.present(&row).await;
        self.settled().await;
        // The row's link (a click in the middle of the row may land beside it).
        self.js(
            "const row = document.querySelector(arguments[0]); \
             row.scrollIntoView({block: 'center'}); (row.querySelector('a[href]') || row).click();",
            vec![json!(row)],
        )
        .await;
        self.ready("customer").await;
        self.present("[data-test=\"customer-360\"]").await;
    }

    /// Switches the language with the header button and waits for the page to render again
    /// in the other language (the navigation's words change).
    async fn toggle_lang(&self) {
        let nav = "a[data-nav=\"today\"]";
        let before = self.text(nav).await;
        self.click("[data-test=\"lang\"]").await;
        self.wait(
            "the page in the other language",
            "return document.body.dataset.ready === 'true' \
               && document.querySelector(arguments[0]).innerText !== arguments[1];",
            vec![json!(nav), json!(before)],
        )
        .await;
    }

    /// A full-page screenshot named `name`.png in the screenshot directory.
    async fn shoot(&self, name: &str) {
        self.settled().await;
        let (w, h) = self.web.get_window_size().await.expect("the window size");
        let need = self
            .js(
                "window.scrollTo(0, 0); return Math.ceil(document.documentElement.scrollHeight \
                   + (window.outerHeight - window.innerHeight));",
                vec![],
            )
            .await
            .as_u64()
            .unwrap_or(h);
        let tall = need.clamp(h, 6000);
        let (w32, h32, tall32) = (
            u32::try_from(w).expect("width"),
            u32::try_from(h).expect("height"),
            u32::try_from(tall).expect("height"),
        );
        if tall > h {
            self.web
                .set_window_size(w32, tall32)
                .await
                .expect("resizing the window");
        }
        // Two frames, so the resized layout is painted.
        self.web
            .execute_async(
                "const done = arguments[0]; \
                 requestAnimationFrame(() => requestAnimationFrame(() => done(true)));",
                vec![],
            )
            .await
            .expect("a painted frame");
        let png = self.web.screenshot().await.expect("a screenshot");
        if tall > h {
            self.web
                .set_window_size(w32, h32)
                .await
                .expect("restoring the window");
        }
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        eprintln!("screenshot {}", path.display());
    }

    /// The first whole number in the sync centre's outbox card.
    async fn outbox_changes(&self) -> u64 {
        let text = self.text("[data-test=\"outbox\"]").await;
        text.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{}: no number in the outbox card: {text:?}", self.who))
    }

    /// A JSON API request with the app's key, which must answer `status`.
    fn api(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let a = self
            .app
            .api(method, path, body.as_ref())
            .unwrap_or_else(|e| panic!("{}: {method} {path}: {e:#}", self.who));
        assert_eq!(
            a.status, status,
            "{}: {method} {path} answered {}: {}",
            self.who, a.status, a.text
        );
        a.json
    }

    /// Polls the API until `ok` holds for the answer to `GET path` (any status).
    async fn api_until(&self, what: &str, path: &str, ok: impl Fn(u16, &Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let a = self
                .app
                .api("GET", path, None)
                .unwrap_or_else(|e| panic!("{}: GET {path}: {e:#}", self.who));
            if ok(a.status, &a.json) {
                return a.json;
            }
            assert!(
                Instant::now() < deadline,
                "{} waited {WAIT:?} for {what}; GET {path} answers {} {}",
                self.who,
                a.status,
                a.text
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Ends the browser session and stops the app (Ctrl-C).
    async fn leave(self) {
        let _ = self.web.close().await;
        self.app.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Demo data, made through the app's API as a script would.

/// The customers and documents the scenarios start from.
struct Demo {
    ordos: String,
}

/// Customers in Inner Mongolia with contacts, equipment, visits (done, planned, a care call)
/// and a submitted quote, written through `rep`'s app.
fn seed(rep: &Rep) -> Demo {
    let session = rep.api("GET", "/api/session", None, 200);
    let org = session["identity"]["org"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let me = session["identity"]["author"]
        .as_str()
        .expect("the session names the author")
        .to_string();
    let customer = |body: Value| -> String {
        rep.api("POST", "/api/customers", Some(body), 201)["id"]
            .as_str()
            .expect("a new customer's id")
            .to_string()
    };
    let ordos = customer(json!({
        "org": org, "scope": SCOPE, "name": ORDOS, "phone": "+86 477 858 1234",
        "industry": "煤炭开采", "stage": "order_customer", "source": "2023 北京国际矿业展",
        "contacts": [
            {"name": "张建国", "title": "采购部经理", "phone": "139 0477 1234", "is_purchaser": true},
            {"name": "刘晓梅", "title": "设备主管", "phone": "+86 138 4770 5678"},
            {"name": "赵鹏", "title": "矿长", "email": "zhaopeng@ordos-mining.example"},
        ],
        "equipment": [
            {"model": "CAT 777G 矿用卡车", "serial": "CAT0777GJRT01523", "status": "running",
             "installed_at": now_ms() - 540 * DAY_MS},
            {"model": "CAT 777G 矿用卡车", "serial": "CAT0777GJRT01524", "status": "running",
             "installed_at": now_ms() - 540 * DAY_MS},
            {"model": "小松 PC2000-8 液压挖掘机", "serial": "KMTPC2000C8-20417", "status": "down",
             "installed_at": now_ms() - 1200 * DAY_MS},
        ],
    }));
    rep.api(
        "POST",
        &format!("/api/customers/{ordos}/edits"),
        Some(json!([
            {"set": ["short_name", "鄂矿"]},
            {"add_address": ["", {"label": "矿区", "street": "准格尔旗薛家湾镇", "city": "鄂尔多斯",
                                  "region": "内蒙古", "country": "中国"}]},
            {"add_product_line": "矿用卡车"},
            {"add_product_line": "液压挖掘机"},
            {"add_competitor": "三一重工"},
            {"add_note": ["", "客户付款及时；年底前有扩产计划，关注二期采购。"]},
        ])),
        200,
    );
    let others = [
        ("包头钢铁集团", "钢铁冶炼", "+86 472 218 3000"),
        ("神华准格尔能源", "煤炭开采", "+86 477 469 2000"),
        ("伊泰煤炭股份", "煤炭开采", "+86 477 856 6666"),
        ("内蒙古北方重型汽车", "装备制造", "+86 472 269 1111"),
    ];
    let mut ids = Vec::new();
    for (name, industry, phone) in others {
        ids.push(customer(json!({
            "org": org, "scope": SCOPE, "name": name, "industry": industry, "phone": phone,
            "stage": "potential",
        })));
    }
    let c = rep.api("GET", &format!("/api/customers/{ordos}"), None, 200);
    let contact = c["customer"]["contacts"][0]["id"]
        .as_str()
        .expect("a contact id")
        .to_string();
    let visit = |body: Value| {
        rep.api("POST", "/api/visits", Some(body), 201);
    };
    // 伊泰 was last visited 75 days ago: overdue on Today.
    visit(json!({
        "visit": {"customer_id": ids[2], "kind": "sales_call", "status": "done",
                  "at": now_ms() - 75 * DAY_MS, "notes": "介绍 CAT 6060 矿用挖掘机。"},
        "edits": [],
    }));
    visit(json!({
        "visit": {"customer_id": ordos, "kind": "return_visit", "status": "done",
                  "at": now_ms() - 20 * DAY_MS, "location": "鄂尔多斯市准格尔旗矿区",
                  "notes": "季度回访：两台 CAT 777G 运行正常，PC2000 液压系统漏油待修；客户计划明年扩产。"},
        "edits": [
            {"add_contact_met": contact},
            {"set_satisfaction": 4},
            {"add_need": ["", {"product_line": "矿用卡车", "quantity": 2, "amount_minor": null,
                               "timeframe": "明年一季度"}]},
            {"add_task": ["", {"title": "安排 PC2000 液压系统检修", "due": now_ms() + 2 * DAY_MS,
                               "assignee": me}]},
        ],
    }));
    visit(json!({
        "visit": {"customer_id": ids[0], "kind": "sales_call", "status": "planned",
                  "at": now_ms() + DAY_MS, "location": "包头市昆都仑区",
                  "notes": "介绍 PC2000 液压挖掘机与以旧换新方案"},
        "edits": [
            {"add_task": ["", {"title": "准备包钢以旧换新方案", "due": now_ms() + DAY_MS, "assignee": me}]},
        ],
    }));
    visit(json!({
        "visit": {"customer_id": ids[1], "kind": "care", "status": "planned",
                  "at": now_ms() + 5 * DAY_MS, "location": "薛家湾镇",
                  "notes": "中秋节问候，送月饼"},
        "edits": [],
    }));
    rep.api(
        "POST",
        "/api/quotes",
        Some(json!({
            "quote": {"customer_id": ordos, "currency": "CNY", "quote_no": "LW-2405-03",
                      "valid_until": now_ms() + 30 * DAY_MS},
            "edits": [
                {"add_line": ["", {"sku": "CAT-777G-TYRE", "description": "27.00R49 矿用轮胎",
                                   "qty": 4, "unit_price_minor": 8_800_000, "discount_bp": 300,
                                   "sort_key": "0001"}]},
                {"add_line": ["", {"sku": "KOM-PC2000-SEAL", "description": "液压缸密封件套装",
                                   "qty": 2, "unit_price_minor": 1_260_000, "discount_bp": 0,
                                   "sort_key": "0002"}]},
                "submit",
            ],
        })),
        201,
    );
    Demo { ordos }
}

/// Waits until `rep`'s replica has the customer with `timeline` entries (it synced).
async fn has_customer(rep: &Rep, id: &str, timeline: usize) {
    rep.api_until(
        &format!("customer {id} with {timeline} timeline entries"),
        &format!("/api/customers/{id}"),
        |status, v| {
            status == 200
                && v["timeline"]
                    .as_array()
                    .is_some_and(|t| t.len() >= timeline)
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// The app's live events, read as a script would (for waiting on the sync's reconnection).

/// Collects the text of `GET /api/events` in a thread until dropped.
struct EventWatch {
    seen: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EventWatch {
    fn start(app: &AppProcess) -> Self {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", app.port)).expect("the app");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("a read timeout");
        write!(
            s,
            "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\n\
             Accept: text/event-stream\r\n\r\n",
            app.port, app.key
        )
        .expect("asking for the events");
        let seen = Arc::new(Mutex::new(String::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop2.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => seen2
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        });
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits for an event line holding every one of `parts`.
    async fn line_with(&self, what: &str, parts: &[&str]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .lines()
                .any(|l| parts.iter().all(|p| l.contains(p)));
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited {WAIT:?} for {what}; the events: {}",
                self.seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Offline work reaches another rep's open page.

#[test]
fn a_visit_and_a_quote_made_offline_reach_another_reps_open_app_without_a_reload() {
    let _one = one_at_a_time();
    let started = Instant::now();
    let mut world = World::new();
    let a_data = world.laptop("a", "li-wei-laptop", "李伟", "rep", &[SCOPE]);
    let b_data = world.laptop("b", "wang-fang-laptop", "王芳", "rep", &[SCOPE]);
    mark(started, "relay and laptops ready");
    let rt = runtime();
    rt.block_on(async {
        let a = world.rep("李伟", &a_data).await;
        let b = world.rep("王芳", &b_data).await;
        mark(started, "apps and browsers ready");
        let demo = seed(&a);
        // One done visit and one quote: both laptops have them.
        has_customer(&a, &demo.ordos, 2).await;
        has_customer(&b, &demo.ordos, 2).await;

        mark(started, "seeded and synced to B");
        // Today, in English and in Chinese (read again after the seeding).
        a.nav("sync", "sync").await;
        a.nav("today", "today").await;
        for section in [
            "planned",
            "follow-ups",
            "open-tasks",
            "greetings",
            "not-visited",
        ] {
            a.present(&format!("[data-test=\"{section}\"]")).await;
        }
        a.wait(
            "Today to list the planned visit, the open tasks and the care call",
            "const t = (s) => document.querySelector(`[data-test=\"${s}\"]`).innerText; \
             return t('planned').includes('包头钢铁集团') \
               && t('open-tasks').includes('安排 PC2000 液压系统检修') \
               && t('greetings').includes('神华准格尔能源') \
               && t('not-visited').includes('伊泰煤炭股份');",
            vec![],
        )
        .await;
        a.shoot("today").await;
        a.toggle_lang().await;
        a.shoot("today-zh").await;
        a.toggle_lang().await;

        mark(started, "Today photographed");
        // B opens the customer and keeps the page open; the marker shows it is never reloaded.
        b.open_customer("鄂尔多斯", &demo.ordos).await;
        let sections = [
            "contacts",
            "equipment",
            "timeline",
            "quotes",
            "tasks",
            "changed",
            "price-history",
        ];
        for section in sections {
            b.present(&format!(
                "[data-test=\"customer-360\"] [data-test=\"{section}\"]"
            ))
            .await;
        }
        let item = "[data-test=\"timeline\"] [data-test=\"timeline-item\"]";
        let before = b.count(item).await;
        assert_eq!(before, 2, "B's timeline: the done visit and the quote");
        b.js("window.__marker = 1;", vec![]).await;
        assert_eq!(
            b.js(
                "return document.querySelector('[data-test=\"live\"]').dataset.connected;",
                vec![]
            )
            .await,
            json!("true"),
            "B's page follows the live events"
        );

        // The relay goes down; A works offline.
        world.kill_relay();
        mark(started, "relay killed");
        a.nav("customers", "customers").await;
        a.type_into("input[data-test=\"search\"]", "鄂尔多斯").await;
        a.present(&format!(
            "[data-test=\"customer-row\"][data-id=\"{}\"]",
            demo.ordos
        ))
        .await;
        a.settled().await;
        a.shoot("customer-search").await;
        a.open_customer("鄂尔多斯", &demo.ordos).await;

        mark(started, "A opened the customer");
        // Log a visit.
        a.click("[data-test=\"log-visit\"]").await;
        a.ready("visit-form").await;
        let notes = "二期扩产确认：需要 2 台 CAT 777G 及配套轮胎，下周提交正式报价。";
        a.choose("select[name=\"kind\"]", "return_visit").await;
        a.choose("select[name=\"status\"]", "done").await;
        a.type_into("input[name=\"location\"]", "鄂尔多斯市准格尔旗矿区调度楼")
            .await;
        a.click("input[name=\"contact\"]").await;
        let (product, qty) = ("input[name=\"need-product\"]", "input[name=\"need-qty\"]");
        a.type_into(product, "矿用卡车").await;
        a.type_into(qty, "2").await;
        a.click("[data-test=\"add-need\"]").await;
        a.type_into_nth(product, 1, "27.00R49 矿用轮胎").await;
        a.type_into_nth(qty, 1, "12").await;
        a.type_into("textarea[name=\"competitors\"]", "徐工 XDE240")
            .await;
        a.choose("select[name=\"satisfaction\"]", "5").await;
        a.type_into("input[name=\"task-title\"]", "提交两台 CAT 777G 的正式报价")
            .await;
        let due = a
            .js(
                "const d = new Date(Date.now() + 7 * 864e5); \
                 const two = (n) => String(n).padStart(2, '0'); \
                 return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}`;",
                vec![],
            )
            .await;
        a.set_value("input[name=\"task-due\"]", due.as_str().expect("a date"))
            .await;
        a.type_into("textarea[name=\"notes\"]", notes).await;
        a.shoot("log-visit").await;
        a.click("[data-test=\"save-visit\"]").await;
        a.ready("customer").await;
        a.wait(
            "the new visit in A's timeline",
            "return document.querySelectorAll(arguments[0]).length === arguments[1];",
            vec![json!(item), json!(before + 1)],
        )
        .await;

        mark(started, "visit saved");
        // Draft a quote with two lines; the form's total is computed in the page.
        a.click("[data-test=\"draft-quote\"]").await;
        a.ready("quote-form").await;
        let quote_no = "LW-2406-17";
        a.type_into("input[name=\"currency\"]", "CNY").await;
        a.type_into("input[name=\"quote_no\"]", quote_no).await;
        // SKU, description, quantity, unit price as typed and in fen, discount as typed and
        // in basis points.
        let lines = [
            (
                "CAT-777G-TYRE",
                "27.00R49 矿用轮胎（二期）",
                6_i64,
                "86,500.00",
                8_650_000_i64,
                "5",
                500_i64,
            ),
            (
                "KOM-PC2000-FLT",
                "PC2000 液压滤芯保养套件",
                3,
                "1333.33",
                133_333,
                "7.5",
                750,
            ),
        ];
        let mut expected = 0_i64;
        for (i, line) in lines.iter().enumerate() {
            let (sku, description, qty, price, price_minor, discount, bp) = *line;
            if i > 0 {
                a.click("[data-test=\"add-line\"]").await;
            }
            a.wait(
                "a quote line row",
                "return document.querySelectorAll('[data-test=\"line\"]').length === arguments[0];",
                vec![json!(i + 1)],
            )
            .await;
            // The fields of line i, among those of every line.
            let field = |name: &str| format!("[data-test=\"line\"] input[name=\"{name}\"]");
            a.type_into_nth(&field("sku"), i, sku).await;
            a.type_into_nth(&field("description"), i, description).await;
            a.type_into_nth(&field("qty"), i, &qty.to_string()).await;
            a.type_into_nth(&field("price"), i, price).await;
            a.type_into_nth(&field("discount"), i, discount).await;
            // As the model computes a line: qty × price × (1 − discount), half away from zero.
            let net = i128::from(qty) * i128::from(price_minor) * i128::from(10_000 - bp);
            expected += i64::try_from((net + 5_000) / 10_000).expect("a total");
        }
        assert_eq!(expected, 49_674_999, "CNY 496,749.99");
        let total = a
            .wait(
                "the draft's total",
                "const t = document.querySelector('[data-test=\"quote-total\"]'); \
                 return t && t.innerText.replace(/[^0-9]/g, '') === arguments[0] \
                   ? t.innerText : null;",
                vec![json!(expected.to_string())],
            )
            .await;
        eprintln!("the draft's total reads {total}");
        a.shoot("draft-quote").await;
        a.click("[data-test=\"save-quote\"]").await;
        a.ready("quote").await;
        assert_eq!(
            a.js(
                "return document.querySelector('[data-test=\"quote-status\"]').dataset.status;",
                vec![]
            )
            .await,
            json!("draft")
        );
        assert_eq!(
            digits(&a.text("[data-test=\"quote-total\"]").await),
            expected.to_string(),
            "the saved quote's total (the model's) is the one the form showed"
        );
        a.present("[data-test=\"submit-quote\"]").await;
        a.shoot("quote").await;

        mark(started, "quote saved");
        // The sync centre: the visit and the quote wait in the outbox.
        a.nav("sync", "sync").await;
        a.present("[data-test=\"sync-state\"]").await;
        a.present("[data-test=\"last-contact\"]").await;
        let waiting = a.outbox_changes().await;
        assert!(
            waiting >= 2,
            "A's outbox holds the visit and the quote: {waiting}"
        );
        a.shoot("sync-waiting").await;
        assert_eq!(b.count(item).await, before, "nothing reached B yet");

        // The relay is back: A syncs ("sync now"), B's open page shows both, live.
        world.restart_relay();
        mark(started, "relay restarted");
        a.click("[data-test=\"sync-now\"]").await;
        b.api("POST", "/api/sync/now", None, 202);
        b.wait(
            "the visit and the quote in B's open Customer 360 timeline",
            "const items = [...document.querySelectorAll(arguments[0])]; \
             const text = items.map(i => i.innerText).join('\\n'); \
             return items.length === arguments[1] && text.includes(arguments[2]) \
               && text.includes(arguments[3]);",
            vec![
                json!(item),
                json!(before + 2),
                json!("二期扩产确认"),
                json!(quote_no),
            ],
        )
        .await;
        mark(started, "B's open page shows the visit and the quote");
        assert_eq!(
            b.js("return window.__marker;", vec![]).await,
            json!(1),
            "B's page was not reloaded"
        );
        a.wait(
            "A's outbox to empty",
            "const o = document.querySelector('[data-test=\"outbox\"]'); \
             const m = o && o.innerText.match(/[0-9]+/); return m !== null && m[0] === '0';",
            vec![],
        )
        .await;
        b.shoot("customer-360").await;
        b.toggle_lang().await;
        b.present("[data-test=\"customer-360\"]").await;
        b.shoot("customer-360-zh").await;
        b.toggle_lang().await;
        assert_eq!(b.js("return window.__marker;", vec![]).await, json!(1));

        a.leave().await;
        b.leave().await;
    });
    eprintln!("scenario took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 2. A refused change, its reason, and the retry once IT fixed the cause.

#[test]
fn a_refused_change_shows_in_the_sync_centre_with_its_reason_and_retries() {
    let _one = one_at_a_time();
    let started = Instant::now();
    let world = World::new();
    let a_data = world.laptop("a", "li-wei-laptop", "李伟", "rep", &[SCOPE]);
    mark(started, "relay and laptop ready");
    let rt = runtime();
    rt.block_on(async {
        let a = world.rep("李伟", &a_data).await;
        mark(started, "app and browser ready");
        let demo = seed(&a);
        has_customer(&a, &demo.ordos, 2).await;
        a.api_until("the seed uploaded", "/api/sync", |_, v| {
            v["outbox"]["changes"] == json!(0)
        })
        .await;

        mark(started, "seeded and uploaded");
        // A new customer in a territory IT did not grant this laptop.
        a.nav("customers", "customers").await;
        a.type_into("input[name=\"name\"]", "天津港务集团").await;
        a.type_into("input[name=\"scope\"]", "south-ports").await;
        a.type_into("input[name=\"phone\"]", "+86 22 2570 6666")
            .await;
        a.type_into("input[name=\"industry\"]", "港口物流").await;
        a.click("form:has(input[name=\"scope\"]) button[type=\"submit\"]")
            .await;
        let id = a
            .wait(
                "the new customer's page",
                "const m = /^#\\/customer\\/([0-9a-f-]{36})$/.exec(location.hash); \
                 return m && m[1];",
                vec![],
            )
            .await
            .as_str()
            .expect("an id")
            .to_string();

        mark(started, "customer created");
        // The relay refuses it: the sync centre says why.
        a.nav("sync", "sync").await;
        let reason = a
            .wait(
                "the refused customer in the sync centre, with the relay's reason",
                "const r = [...document.querySelectorAll('[data-test=\"refused-item\"]')]; \
                 return r.length === 1 && r[0].innerText.includes(\"outside the device's scopes\") \
                   && r[0].querySelector('[data-test=\"retry\"]') !== null \
                   ? r[0].innerText : null;",
                vec![],
            )
            .await;
        eprintln!("refused: {reason}");
        a.present("[data-test=\"retry-all\"]").await;
        a.shoot("sync-refused").await;
        assert!(
            world.relay_cli(&["audit", "--doc", &id, "--json"]).trim() == "[]",
            "the relay has nothing of the refused customer"
        );

        mark(started, "refusal shown");
        // IT grants the territory; the laptop's connection comes back with the new grant.
        let events = EventWatch::start(&a.app);
        let granted = world.relay_cli(&[
            "device",
            "grant",
            "li-wei-laptop",
            "--scope",
            SCOPE,
            "--scope",
            "south-ports",
        ]);
        assert!(granted.contains("south-ports"), "{granted}");
        events
            .line_with(
                "the sync to reconnect with the new grant",
                &["\"event\":\"connected\"", "south-ports"],
            )
            .await;

        mark(started, "reconnected with the grant");
        // The rep retries: the refusal goes, and the customer reaches the relay.
        a.click("[data-test=\"refused-item\"] [data-test=\"retry\"]")
            .await;
        a.wait(
            "the refusal to leave the sync centre",
            "return document.querySelector('[data-test=\"refused-item\"]') === null \
               && document.body.dataset.ready === 'true';",
            vec![],
        )
        .await;
        mark(started, "refusal gone");
        let deadline = Instant::now() + WAIT;
        loop {
            let audit: Value =
                serde_json::from_str(&world.relay_cli(&["audit", "--doc", &id, "--json"]))
                    .expect("audit --json");
            if audit.as_array().is_some_and(|a| !a.is_empty()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "waited {WAIT:?} for the relay to accept customer {id}; A's sync centre: {}",
                a.describe().await
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        mark(started, "the relay has the customer");
        a.wait(
            "A's outbox to empty",
            "const o = document.querySelector('[data-test=\"outbox\"]'); \
             const m = o && o.innerText.match(/[0-9]+/); return m !== null && m[0] === '0';",
            vec![],
        )
        .await;
        assert_eq!(
            a.count("[data-test=\"refused-item\"]").await,
            0,
            "not refused again"
        );
        let c = a.api("GET", &format!("/api/customers/{id}"), None, 200);
        assert_eq!(c["customer"]["scope"], "south-ports");
        a.leave().await;
    });
    eprintln!("scenario took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 3. A conflict settled in the page.

#[test]
fn a_conflict_is_resolved_in_the_page() {
    let _one = one_at_a_time();
    let started = Instant::now();
    let mut world = World::new();
    let a_data = world.laptop("a", "li-wei-laptop", "李伟", "rep", &[SCOPE]);
    let b_data = world.laptop("b", "wang-fang-laptop", "王芳", "rep", &[SCOPE]);
    mark(started, "relay and laptops ready");
    let rt = runtime();
    rt.block_on(async {
        let a = world.rep("李伟", &a_data).await;
        let b = world.rep("王芳", &b_data).await;
        let demo = seed(&a);
        has_customer(&b, &demo.ordos, 2).await;
        a.api_until("A's seed uploaded", "/api/sync", |_, v| {
            v["outbox"]["changes"] == json!(0)
        })
        .await;

        mark(started, "seeded and synced to B");
        // Both set the industry while the relay is down.
        world.kill_relay();
        let (mine, theirs) = ("露天煤矿开采", "煤炭洗选加工");
        let edit = |rep: &Rep, value: &str| {
            rep.api(
                "POST",
                &format!("/api/customers/{}/edits", demo.ordos),
                Some(json!([{"set": ["industry", value]}])),
                200,
            );
        };
        edit(&a, mine);
        edit(&b, theirs);
        world.restart_relay();
        a.api("POST", "/api/sync/now", None, 202);
        b.api("POST", "/api/sync/now", None, 202);

        mark(started, "both edited; relay restarted");
        // Both sync centres list the conflict with both values.
        let conflict = "[data-test=\"conflict\"][data-path=\"industry\"]";
        let both = "const c = document.querySelector(arguments[0]); if (!c) return false; \
             const picks = [...c.querySelectorAll('[data-test=\"pick\"]')] \
               .map(p => p.innerText.trim()); \
             return picks.length === 2 && picks.includes(arguments[1]) \
               && picks.includes(arguments[2]);";
        for rep in [&a, &b] {
            rep.nav("sync", "sync").await;
            rep.wait(
                "the industry conflict with both values",
                both,
                vec![json!(conflict), json!(mine), json!(theirs)],
            )
            .await;
        }
        a.shoot("sync-conflict").await;

        mark(started, "both sync centres list the conflict");
        // A keeps B's value.
        let index = a
            .js(
                "return [...document.querySelectorAll(arguments[0] + ' [data-test=\"pick\"]')] \
                   .findIndex(p => p.innerText.trim() === arguments[1]);",
                vec![json!(conflict), json!(theirs)],
            )
            .await
            .as_u64()
            .expect("B's value has a pick button");
        let picks = a
            .web
            .find_all(Locator::Css(&format!("{conflict} [data-test=\"pick\"]")))
            .await
            .expect("the pick buttons");
        picks[usize::try_from(index).expect("an index")]
            .click()
            .await
            .expect("clicking B's value");
        for rep in [&a, &b] {
            rep.wait(
                "the conflict to be gone",
                "return document.querySelector(arguments[0]) === null \
                   && document.body.dataset.ready === 'true';",
                vec![json!(conflict)],
            )
            .await;
        }
        mark(started, "the conflict is gone from both pages");
        // Both replicas hold B's value, and no conflict.
        for rep in [&a, &b] {
            rep.api_until(
                "the kept value",
                &format!("/api/customers/{}", demo.ordos),
                |_, v| v["customer"]["industry"] == json!(theirs),
            )
            .await;
            let s = rep.api("GET", "/api/sync", None, 200);
            assert_eq!(s["conflicts"], json!([]), "{}: {s}", rep.who);
        }
        b.open_customer("鄂尔多斯", &demo.ordos).await;
        let shown = b.text("[data-test=\"customer-360\"]").await;
        assert!(
            shown.contains(theirs) && !shown.contains(mine),
            "B's Customer 360 shows the kept value only: {shown}"
        );
        a.leave().await;
        b.leave().await;
    });
    eprintln!("scenario took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 4. The key, the Host and the Origin, in the browser.

/// A web site elsewhere: any request gets a small HTML page. Stops when dropped.
struct OtherSite {
    port: u16,
    /// Every request it received (head only), for what a browser sent it.
    seen: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtherSite {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the other site");
        let port = listener.local_addr().expect("its address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let seen = Arc::new(Mutex::new(String::new()));
        let seen2 = seen.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if let Ok(mut seen) = seen2.lock() {
                    seen.push_str(&String::from_utf8_lossy(&req));
                }
                let page = "<!doctype html><meta charset=utf-8><title>elsewhere</title>\
                            <p>A page on another web site.</p>";
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
            }
        });
        Self {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for OtherSite {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The HTTP status of the page the browser shows (Chromium's navigation timing).
const STATUS: &str = "const n = performance.getEntriesByType('navigation')[0]; \
    return n ? n.responseStatus : null;";

#[test]
fn the_app_refuses_requests_without_its_key_or_from_another_origin() {
    let _one = one_at_a_time();
    let started = Instant::now();
    let world = World::new();
    let data = world.laptop("a", "li-wei-laptop", "李伟", "rep", &[SCOPE]);
    let other = OtherSite::start();
    let rt = runtime();
    rt.block_on(async {
        let app = AppProcess::start(&data, &[]).unwrap_or_else(|e| panic!("the app: {e:#}"));
        let origin = app.origin();
        // `rebind.test` resolves to 127.0.0.1 in this browser, as a rebound DNS name would.
        let web = world
            .browser(
                "visitor",
                &["--host-resolver-rules=MAP rebind.test 127.0.0.1"],
            )
            .await;
        let who = Rep {
            who: "the browser".into(),
            app,
            web,
            shots: world.shots.clone(),
        };
        let page = |status: u16, contains: &'static str| {
            let who = &who;
            async move {
                assert_eq!(who.js(STATUS, vec![]).await, json!(status), "{}", who.describe().await);
                let text = who.text("body").await;
                assert!(text.contains(contains), "{text}");
                assert_eq!(who.count("[data-test=\"lang\"]").await, 0, "no app page: {text}");
                assert!(!text.contains("李伟"), "nothing of the replica: {text}");
            }
        };

        // Without the key: the API answers 401, and the page (its code is no secret) shows
        // nothing of the replica, only where the key comes from.
        for path in ["/api/session", "/api/customers", "/api/events"] {
            who.web
                .goto(&format!("{origin}{path}"))
                .await
                .expect("navigating");
            page(401, "open the address `fieldsync app` printed").await;
        }
        who.web.goto(&format!("{origin}/")).await.expect("navigating");
        who.ready("error").await;
        let text = who.text("[data-test=\"error\"]").await;
        assert!(text.contains("fieldsync app"), "{text}");
        assert!(!who.text("body").await.contains("李伟"));
        let wrong = format!("{origin}/#key={}", "0".repeat(64));
        who.web.goto(&wrong).await.expect("navigating");
        who.web.refresh().await.expect("reload");
        who.ready("error").await;

        // A rebound DNS name gets 421 even with the right key.
        let rebound = who.app.url.replace("127.0.0.1", "rebind.test");
        who.web.goto(&rebound).await.expect("navigating");
        page(421, "answers only at 127.0.0.1 or localhost").await;

        // The launch address keeps the key in its fragment (never sent to a server); the page
        // moves it into the tab's session storage and out of the address bar. No cookie
        // exists, so nothing goes to the other servers of 127.0.0.1.
        who.web.goto(&who.app.url).await.expect("the launch address");
        who.ready("today").await;
        let url = who.web.current_url().await.expect("the address");
        assert_eq!(url.as_str(), format!("{origin}/#/today"), "the key left the address bar");
        let cookies = who.web.get_all_cookies().await.expect("cookies");
        assert!(cookies.is_empty(), "no cookie at all: {cookies:?}");
        // A reload keeps the key (session storage); the data loads.
        who.web.refresh().await.expect("reload");
        who.ready("today").await;
        who.web
            .goto(&format!("{origin}/#/customers"))
            .await
            .expect("navigating");
        who.ready("customers").await;
        assert!(who.text("body").await.contains("李伟"));
        let elsewhere = format!("http://localhost:{}/", other.port);
        who.web.goto(&elsewhere).await.expect("another local server");
        let elsewhere = format!("http://127.0.0.1:{}/", other.port);
        who.web.goto(&elsewhere).await.expect("another local server");
        let seen = other.seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert!(seen.contains("GET / "), "{seen}");
        assert!(!seen.contains(&who.app.key), "the key reached another server: {seen}");

        // A page of another origin can neither read the API nor change anything through it.
        let tried = who
            .web
            .execute_async(
                "const [app, done] = arguments; (async () => { const out = {}; \
                 try { const r = await fetch(app + '/api/session', {credentials: 'include'}); \
                       out.read = 'status ' + r.status + ': ' + await r.text(); } \
                 catch (e) { out.read = 'blocked: ' + e.name; } \
                 try { const r = await fetch(app + '/api/customers', \
                         {mode: 'no-cors', credentials: 'include'}); \
                       out.opaque = r.type + ' ' + r.status + ' [' + await r.text() + ']'; } \
                 catch (e) { out.opaque = 'blocked: ' + e.name; } \
                 try { const r = await fetch(app + '/api/customers', \
                         {method: 'POST', mode: 'no-cors', \
                         credentials: 'include', headers: {'Content-Type': 'text/plain'}, \
                         body: JSON.stringify({org: '', scope: 'north-mines', name: 'CSRF 客户'})}); \
                       out.write = r.type; } \
                 catch (e) { out.write = 'blocked: ' + e.name; } \
                 out.events = await new Promise((resolve) => { \
                   const s = new EventSource(app + '/api/events', {withCredentials: true}); \
                   s.onopen = () => { s.close(); resolve('open'); }; \
                   s.onerror = () => { s.close(); resolve('error'); }; }); \
                 done(out); })();",
                vec![json!(origin)],
            )
            .await
            .expect("the other site's script");
        eprintln!("from another origin: {tried}");
        // No CORS header: the answer cannot be read. Cross-Origin-Resource-Policy: even an
        // opaque (no-cors) answer is withheld from the other page.
        assert_eq!(tried["read"], json!("blocked: TypeError"), "{tried}");
        assert_eq!(tried["opaque"], json!("blocked: TypeError"), "{tried}");
        assert_eq!(tried["events"], json!("error"), "{tried}");
        assert!(!tried.to_string().contains("李伟"), "{tried}");
        // Whatever the browser let through, the app wrote nothing.
        let listed = who.api("GET", "/api/customers", None, 200);
        assert!(
            !listed.to_string().contains("CSRF"),
            "the other site created nothing: {listed}"
        );
        let _ = who.web.close().await;
        who.app.stop();
    });
    eprintln!("scenario took {:?}", started.elapsed());
}
