//! `status`: whether the relay serves, where, since when, and what it holds and carries.

use std::process::ExitCode;

use fieldsync_core::display::{format_bytes, format_millis};
use fieldsync_relay::presence::relay_status;

use crate::common::Common;

/// Exit status when no node serves (scripts and health checks test it; 1 is an error).
const NOT_SERVING: u8 = 3;

/// Prints the relay's status (JSON with `json`); exits [`NOT_SERVING`] when no node serves.
pub(crate) fn run(common: &Common, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = common.load()?;
    let store = fieldsync_relay::RelayStore::open_existing(&cfg)?;
    let s = relay_status(&cfg, &store)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        let serving: Vec<_> = s.nodes.iter().filter(|n| n.serving).collect();
        match serving.as_slice() {
            [] => println!("serving: no (no relay node has reported in the last 20 s)"),
            [one] => println!(
                "serving: yes, on {}{} (version {}, protocol {}, up {})",
                one.report.listen,
                one.report
                    .public_addr
                    .as_deref()
                    .map_or(String::new(), |a| format!(", devices use {a}")),
                one.report.version,
                one.report.protocol,
                uptime(one.uptime_seconds.unwrap_or(0))
            ),
            many => println!("serving: yes, {} nodes", many.len()),
        }
        for n in &s.nodes {
            let state = if n.serving {
                format!("serving, up {}", uptime(n.uptime_seconds.unwrap_or(0)))
            } else if n.report.stopped {
                format!("stopped {}", format_millis(n.reported_at))
            } else {
                format!("silent since {}", format_millis(n.reported_at))
            };
            println!(
                "  node {}  {}  pid {}  {state}  {} connections, {} devices{}",
                n.report.node,
                n.report.listen,
                n.report.pid,
                n.report.connections,
                n.report.devices.len(),
                n.report
                    .metrics_addr
                    .as_deref()
                    .map_or(String::new(), |a| format!(
                        ", metrics at http://{a}/metrics"
                    ))
            );
        }
        println!("database: {}", s.database);
        println!("epoch: {}", s.store.epoch);
        println!(
            "log position: {} ({} changes, {} documents)",
            s.store.high_seq, s.store.changes, s.store.docs
        );
        println!(
            "devices: {} known, {} revoked, {} open enrolment tokens",
            s.store.devices, s.store.revoked_devices, s.open_tokens
        );
        println!(
            "online: {} devices, {} still downloading ({} documents, {} waiting){}",
            s.devices_online,
            s.devices_catching_up,
            s.backlog_documents,
            format_bytes(s.backlog_bytes),
            if s.write_queue > 0 {
                format!("; {} uploads queued for the database", s.write_queue)
            } else {
                String::new()
            }
        );
        println!(
            "fingerprint: {}",
            s.fingerprint
                .as_deref()
                .unwrap_or("none (no certificate yet)")
        );
    }
    Ok(if s.serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_SERVING)
    })
}

/// `3 d 4 h`, `2 h 5 min`, `40 s`.
fn uptime(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {} s", secs % 60)
    } else {
        format!("{secs} s")
    }
}
