//! Real processes for tests: finding the workspace's binaries and running a relay process.
//!
//! Cargo only builds (and names in `CARGO_BIN_EXE_*`) the binaries of the package under test,
//! so a test of `fieldsync-tests` cannot rely on `fieldsync` (package `fieldsync-client`) or
//! `fieldsync-relay` (package `fieldsync-relay`) being built, or being fresh. [`binary`] asks
//! cargo to build the one binary (a no-op when it is up to date) with the profile the calling
//! executable was built with, into the same target directory, and returns its path.
//! `FIELDSYNC_BIN_DIR` skips the build and takes the binaries from that directory (for
//! running the tests against installed or pre-built binaries).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The `fieldsync` CLI (package `fieldsync-client`).
pub const CLIENT_BIN: (&str, &str) = ("fieldsync-client", "fieldsync");
/// The relay server (package `fieldsync-relay`).
pub const RELAY_BIN: (&str, &str) = ("fieldsync-relay", "fieldsync-relay");

/// The workspace root (the parent of this package's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// `target/<profile>` of the running executable: a test runs from `target/<profile>/deps`,
/// a binary from `target/<profile>`.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe
        .parent()
        .context("the executable has no directory")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Path of binary `bin` of workspace package `package`, built if needed (see the module docs).
/// Builds at most once per process and binary; concurrent callers wait for one build.
pub fn binary((package, bin): (&str, &str)) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FIELDSYNC_BIN_DIR") {
        let p = Path::new(&dir).join(bin);
        if !p.is_file() {
            bail!(
                "FIELDSYNC_BIN_DIR is set but {} does not exist",
                p.display()
            );
        }
        return Ok(p);
    }
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, p)) = built.iter().find(|(b, _)| b == bin) {
        return Ok(p.clone());
    }
    let dir = profile_dir()?;
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("target profile directory")?
        .to_string();
    let target = dir.parent().context("target directory")?.to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .arg("--target-dir")
        .arg(&target);
    // Cargo describes the running test to it in these variables. A build script that reads
    // one (ring's reads CARGO_MANIFEST_DIR) would rerun, rebuilding ring and every crate above
    // it on this build, and again on the next ordinary one: about a minute each time.
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_EXE_")
            || matches!(
                k,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            )
        {
            cmd.env_remove(&key);
        }
    }
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {} to build {bin}", Path::new(&cargo).display()))?;
    let path = dir.join(bin);
    if !out.status.success() || !path.is_file() {
        bail!(
            "building {bin} (package {package}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    built.push((bin.to_string(), path.clone()));
    Ok(path)
}

/// A `fieldsync` command on the replica in `data`, as a rep would run it but shielded from
/// the caller's environment: no `FIELDSYNC_DATA`, `FIELDSYNC_TOKEN` or `FIELDSYNC_CREDENTIAL`,
/// errors only in its log (`FIELDSYNC_LOG`), nothing on stdin. Add the arguments.
pub fn laptop_command(data: &Path) -> anyhow::Result<Command> {
    let mut c = Command::new(binary(CLIENT_BIN)?);
    c.arg("--data")
        .arg(data)
        .env_remove("FIELDSYNC_DATA")
        .env_remove("FIELDSYNC_TOKEN")
        .env_remove("FIELDSYNC_CREDENTIAL")
        .env("FIELDSYNC_LOG", "error")
        .stdin(Stdio::null());
    Ok(c)
}

/// `fieldsync-relay ARGS --data DATA` (the flag belongs to the subcommand, so it follows
/// `args`), logging warnings only, nothing on stdin.
pub fn relay_command(data: &Path, args: &[&str]) -> anyhow::Result<Command> {
    let mut c = Command::new(binary(RELAY_BIN)?);
    c.args(args)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    Ok(c)
}

/// A free UDP port on 127.0.0.1 (bound and released: another process could take it in
/// between, which is unlikely enough for tests and noticed as a failed start).
pub fn free_udp_addr() -> anyhow::Result<SocketAddr> {
    let s = UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket")?;
    Ok(s.local_addr()?)
}

/// A free TCP port on 127.0.0.1 (as [`free_udp_addr`]).
pub fn free_tcp_addr() -> anyhow::Result<SocketAddr> {
    let s = std::net::TcpListener::bind("127.0.0.1:0").context("binding a TCP socket")?;
    Ok(s.local_addr()?)
}

/// The numeric series of a relay's `/metrics` page at `addr`, by name (labelled series
/// keep their labels in the name).
pub fn scrape_metrics(addr: SocketAddr) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).context("connecting to the metrics port")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut page = String::new();
    s.read_to_string(&mut page)?;
    Ok(page
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect())
}

/// A `fieldsync-relay serve` child process.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its certificate fingerprint.
    pub fingerprint: String,
    /// Its data directory.
    pub data: PathBuf,
}

impl RelayProcess {
    /// Starts `fieldsync-relay serve --data DATA --listen ADDR [extra…]` and waits (up to
    /// 30 s) for its `fingerprint:` and `listening on` lines. Its log (stderr) goes to
    /// `DATA/../<data dir name>.log`, appended across restarts, so a failure can be read.
    pub fn start(data: &Path, addr: SocketAddr, extra: &[&str]) -> anyhow::Result<Self> {
        let bin = binary(RELAY_BIN)?;
        std::fs::create_dir_all(data)?;
        let log = data.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("spawning fieldsync-relay")?;
        let stdout = child.stdout.take().context("relay stdout")?;
        match read_banner(stdout) {
            Ok((fingerprint, addr)) => Ok(Self {
                child,
                addr,
                fingerprint,
                data: data.to_path_buf(),
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (graceful shutdown), then wait up to 15 s, then SIGKILL.
    pub fn stop(mut self) {
        // kill(1) rather than a libc dependency.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the relay's two start-up lines from its stdout, then drains the rest in a thread
/// (so the relay never blocks on a full pipe).
fn read_banner(stdout: ChildStdout) -> anyhow::Result<(String, SocketAddr)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut fingerprint = None;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(f) = line.strip_prefix("fingerprint: ") {
                fingerprint = Some(f.trim().to_string());
            } else if let Some(a) = line.strip_prefix("listening on ") {
                let _ = tx.send((fingerprint.clone(), a.trim().to_string()));
                break;
            }
        }
        for _ in lines {}
    });
    let (fingerprint, addr) = rx
        .recv_timeout(Duration::from_secs(30))
        .context("the relay did not report `listening on` within 30 s (see its .log file)")?;
    Ok((
        fingerprint.context("the relay printed no fingerprint")?,
        addr.parse().context("the relay's listening address")?,
    ))
}

/// The machine's 1-minute load average as printed by the kernel, or `?` where unreadable.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Peak resident memory (`VmHWM`) of a process, in KiB (Linux only; `None` elsewhere).
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident memory now (`VmRSS`) of a process, in KiB (Linux only; `None` elsewhere).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time a process has used so far (user and system, all threads), in seconds (Linux
/// only; `None` elsewhere). Counted in the kernel's clock ticks of 10 ms.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// A `fieldsync app --port 0 --json` child process: the rep's app over the replica in a data
/// directory (syncing in the background when the directory has a relay configured).
#[derive(Debug)]
pub struct AppProcess {
    child: Child,
    /// The launch address it printed, carrying this launch's key (`http://127.0.0.1:PORT/#key=…`).
    pub url: String,
    /// The port on 127.0.0.1.
    pub port: u16,
    /// This launch's key (for `Authorization: Bearer KEY`).
    pub key: String,
    /// The laptop's data directory.
    pub data: PathBuf,
}

/// An answer of [`AppProcess::api`].
#[derive(Debug)]
pub struct ApiAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The body as JSON (`Null` when empty or not JSON).
    pub json: serde_json::Value,
    /// The body as text.
    pub text: String,
}

impl AppProcess {
    /// Starts `fieldsync --data DATA app --port 0 --json [extra…]` and waits (up to 30 s) for
    /// the address it prints. Its log (stderr, level `FIELDSYNC_LOG` or `warn`) goes to
    /// `DATA.app.log` beside the data directory, appended across restarts.
    pub fn start(data: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let log_path = data.with_extension("app.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut child = laptop_command(data)?
            .args(["app", "--port", "0", "--json"])
            .args(extra)
            .env(
                "FIELDSYNC_LOG",
                std::env::var("FIELDSYNC_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("spawning `fieldsync app`")?;
        match read_app_address(&mut child, &log_path) {
            Ok((url, port, key)) => Ok(Self {
                child,
                url,
                port,
                key,
                data: data.to_path_buf(),
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// `http://127.0.0.1:PORT`, the app's origin.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One request to the app's JSON API as a script would make it: `Authorization: Bearer
    /// KEY`, and for a `POST` the app's own `Origin`. `body` is sent as JSON.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<ApiAnswer> {
        let mut headers = vec![format!("Authorization: Bearer {}", self.key)];
        if method != "GET" {
            headers.push(format!("Origin: {}", self.origin()));
        }
        http_request(self.port, method, path, &headers, body)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT (what Ctrl-C sends: the app stops its sync and its server cleanly), then waits
    /// up to 15 s, then SIGKILL.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `fieldsync app --json` printed: the launch address, the port and the key. Drains the
/// rest of its stdout in a thread.
fn read_app_address(child: &mut Child, log: &Path) -> anyhow::Result<(String, u16, String)> {
    let stdout = child.stdout.take().context("app stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // The JSON object may span lines (it is pretty-printed): gather lines until it parses.
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut printed = String::new();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            printed.push_str(&line);
            printed.push('\n');
            if serde_json::from_str::<serde_json::Value>(&printed).is_ok() {
                break;
            }
        }
        let _ = tx.send(printed);
        for _ in lines {}
    });
    let printed = rx.recv_timeout(Duration::from_secs(30)).with_context(|| {
        format!(
            "`fieldsync app` printed no address within 30 s (see {})",
            log.display()
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(&printed).with_context(|| {
        format!(
            "`fieldsync app --json` printed {printed:?} (see {})",
            log.display()
        )
    })?;
    let url = value["url"]
        .as_str()
        .context("no `url` in what `fieldsync app --json` printed")?
        .to_string();
    let port = value["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .context("no `port` in what `fieldsync app --json` printed")?;
    let key = url
        .split_once("key=")
        .map(|(_, k)| k.to_string())
        .context("the launch address carries no key")?;
    Ok((url, port, key))
}

/// A plain HTTP/1.1 request to `127.0.0.1:port` (`Host` set, `Connection: close`) with
/// `headers` (whole lines, no CRLF) and an optional JSON body; reads the whole answer.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[String],
    body: Option<&serde_json::Value>,
) -> anyhow::Result<ApiAnswer> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body
        .map(serde_json::to_vec)
        .transpose()?
        .unwrap_or_default();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() || method != "GET" {
        req.push_str("Content-Type: application/json\r\n");
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(&body)?;
    // Read the head, then the body by its length (a server may keep the connection open
    // despite `Connection: close`), by its chunks, or to the end.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s
            .read(&mut buf)
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        if n == 0 {
            bail!("the answer to {method} {path} ended in its head");
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut content = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while content.len() < len {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            content.extend_from_slice(&buf[..n]);
        }
        content.truncate(len);
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        content = loop {
            if let Ok(body) = dechunk(&content) {
                break body;
            }
            let n = s.read(&mut buf)?;
            if n == 0 {
                break dechunk(&content)?;
            }
            content.extend_from_slice(&buf[..n]);
        };
    } else {
        s.read_to_end(&mut content)?;
    }
    let text = String::from_utf8_lossy(&content).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Ok(ApiAnswer { status, json, text })
}

/// The body of a chunked transfer encoding.
fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line without its end")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("a chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).context("a chunk shorter than its size")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}
