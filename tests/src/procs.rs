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
