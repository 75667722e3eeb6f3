//! Real browsers for the end-to-end tests of the rep's app: Debian's `chromium`, driven over
//! WebDriver by `chromedriver` (the tests talk WebDriver with the `fantoccini` crate).
//!
//! [`ChromeDriver::start`] runs `chromedriver` on a free port in a process group of its own;
//! dropping it ends the whole group, so neither the driver nor a browser it started outlives
//! a test, even one that panics with sessions open. [`ChromeDriver::capabilities`] gives the
//! session options: headless Chromium with a profile directory of the caller's choosing (one
//! per simulated rep, so cookies and local storage are not shared, and removed with the
//! test's temporary directory).
//!
//! The browser is not optional: without `chromium` and `chromedriver` the tests fail, saying
//! which Debian packages to install. `FIELDSYNC_CHROMIUM` and `FIELDSYNC_CHROMEDRIVER` name
//! other binaries.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::procs::{free_tcp_addr, http_request};

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The command line every session's browser gets (plus its profile directory).
pub const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1366,900",
];

const INSTALL: &str = "install Debian's `chromium` and `chromium-driver` packages \
    (`apt-get install chromium chromium-driver`; .ci/run installs them)";

/// The browser and the driver, or an error saying what to install.
pub fn find_browser() -> anyhow::Result<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("FIELDSYNC_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHROMIUM));
    if !chromium.is_file() {
        bail!(
            "the browser tests need Chromium at {}: {INSTALL}",
            chromium.display()
        );
    }
    let driver = match std::env::var_os("FIELDSYNC_CHROMEDRIVER") {
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain([PathBuf::from("/usr/bin")])
            .map(|d| d.join("chromedriver"))
            .find(|p| p.is_file()),
    };
    match driver {
        Some(d) if d.is_file() => Ok((chromium, d)),
        _ => bail!("the browser tests need `chromedriver`: {INSTALL}"),
    }
}

/// A `chromedriver` process, in its own process group.
#[derive(Debug)]
pub struct ChromeDriver {
    child: Child,
    /// Its WebDriver address, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The browser its sessions run.
    pub chromium: PathBuf,
    /// Its log (and the browsers' stderr).
    pub log: PathBuf,
}

impl ChromeDriver {
    /// Starts `chromedriver` on a free port, logging to `log`, and waits (up to 30 s) until
    /// it says it is ready.
    pub fn start(log: &Path) -> anyhow::Result<Self> {
        let (chromium, driver) = find_browser()?;
        let port = free_tcp_addr()?.port();
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&driver);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({INSTALL})", driver.display()))?;
        let mut me = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            chromium,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = me.child.try_wait() {
                bail!(
                    "chromedriver exited ({status}) before it was ready: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            if let Ok(a) = http_request(port, "GET", "/status", &[], None)
                && a.json["value"]["ready"] == Value::Bool(true)
            {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!(
                    "chromedriver was not ready within 30 s: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The capabilities of a new session: headless Chromium with its profile in `profile`
    /// (created by the browser) and `extra` arguments after [`CHROMIUM_ARGS`].
    pub fn capabilities(&self, profile: &Path, extra: &[&str]) -> serde_json::Map<String, Value> {
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend(extra.iter().map(|a| a.to_string()));
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium.display().to_string(),
                "args": args,
            },
        });
        match caps {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }

    /// Signals the whole process group (the driver and every browser it started).
    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        self.signal_group("TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Browsers that ignored SIGTERM, and the driver if it did.
        self.signal_group("KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
