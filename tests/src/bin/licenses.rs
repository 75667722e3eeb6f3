//! The dependency check CI runs: every crate the workspace builds on comes from crates.io and
//! is offered under at least one licence on the allowed list.
//!
//! Reads `cargo metadata` (all platforms, so a Windows-only dependency is checked too) and
//! evaluates each package's SPDX expression: `OR` needs one allowed alternative, `AND` (and
//! `WITH` exceptions, judged by their licence) needs every part; the old `/` separator counts as
//! `OR`. Prints the licences in use with their counts, then every package that fails, and exits
//! non-zero if any does.
//!
//! ```text
//! cargo run -p fieldsync-tests --bin fieldsync-licenses
//! ```

use std::collections::BTreeMap;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use serde_json::Value;

/// Licences whose terms let the engine be embedded in closed-source dealer software.
const ALLOWED: &[&str] = &[
    "0BSD",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSL-1.0",
    "CC0-1.0",
    "CDLA-Permissive-2.0",
    "ISC",
    "MIT",
    "MIT-0",
    "MPL-2.0",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "Unlicense",
    "Zlib",
    // SQLite's public-domain dedication, and libtomcrypt's licence, both in SQLCipher's
    // sources: no conditions at all.
    "blessing",
    "WTFPL",
];

/// The registry every dependency must come from.
const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

/// Whether an SPDX expression (without parentheses nesting beyond one level) allows use.
fn allowed(expr: &str) -> bool {
    let expr = expr.replace('/', " OR ");
    // One level of parentheses: `(A OR B) AND C`.
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut cur = String::new();
    for tok in expr
        .replace('(', " ( ")
        .replace(')', " ) ")
        .split_whitespace()
    {
        match tok {
            "(" => {
                depth += 1;
                cur.push_str(" ( ");
            }
            ")" => {
                depth = depth.saturating_sub(1);
                cur.push_str(" ) ");
            }
            "OR" if depth == 0 => parts.push(std::mem::take(&mut cur)),
            t => {
                cur.push(' ');
                cur.push_str(t);
            }
        }
    }
    parts.push(cur);
    parts.iter().any(|alt| {
        alt.split(" AND ").all(|term| {
            let term = term
                .trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .trim();
            if term.contains(" OR ") || term.contains('(') {
                return allowed(&term.replace(['(', ')'], " "));
            }
            // `A WITH exception`: the exception only adds permissions.
            let licence = term.split(" WITH ").next().unwrap_or_default().trim();
            ALLOWED.contains(&licence)
        })
    })
}

fn main() -> anyhow::Result<ExitCode> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: Value = serde_json::from_slice(&out.stdout).context("reading cargo metadata")?;
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .context("no workspace members")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut in_use: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let packages = meta["packages"].as_array().context("no packages")?;
    for p in packages {
        let id = p["id"].as_str().unwrap_or_default();
        if members.contains(&id) {
            continue;
        }
        let name = format!(
            "{} {}",
            p["name"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?")
        );
        match p["source"].as_str() {
            Some(CRATES_IO) => {}
            other => failures.push(format!(
                "{name}: comes from {}, not crates.io",
                other.unwrap_or("a local path")
            )),
        }
        match p["license"].as_str() {
            Some(l) => {
                *in_use.entry(l.to_string()).or_default() += 1;
                if !allowed(l) {
                    failures.push(format!("{name}: licence `{l}` is not on the allowed list"));
                }
            }
            None => failures.push(format!("{name}: declares no SPDX licence")),
        }
    }
    println!("| licence expression | crates |\n|---|---|");
    let mut rows: Vec<_> = in_use.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (l, n) in rows {
        println!("| {l} | {n} |");
    }
    if failures.is_empty() {
        println!(
            "\nall {} dependencies come from crates.io under allowed licences",
            packages.len() - members.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("\n{} dependencies fail the check:", failures.len());
    for f in &failures {
        eprintln!("  {f}");
    }
    Ok(ExitCode::FAILURE)
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn spdx_expressions_are_judged_by_their_alternatives() {
        assert!(allowed("MIT OR Apache-2.0"));
        assert!(allowed("MIT/Apache-2.0"));
        assert!(allowed("(MIT OR Apache-2.0) AND Unicode-3.0"));
        assert!(allowed(
            "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT"
        ));
        assert!(allowed("MIT OR Apache-2.0 OR LGPL-2.1-or-later"));
        assert!(!allowed("GPL-3.0-only"));
        assert!(!allowed("MIT AND GPL-3.0-only"));
        assert!(!allowed("(GPL-2.0 OR LGPL-2.1) AND MIT"));
    }
}
