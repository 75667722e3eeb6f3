//! Per-device daily quotas: how many new documents, and how many bytes of changes, one device
//! may store on the relay in a UTC day.
//!
//! Every document a device creates is downloaded by every laptop of its scope, so one device
//! (a hostile one, or a buggy import script) could otherwise fill the relay and every replica
//! of a scope in seconds. The quota is checked in the upload's transaction, before a change is
//! applied; a change over it is refused with a retryable reason (it stays in the device's
//! outbox and goes through the next day, or once IT raises the quota). Usage is kept per device
//! and day by the store (`device_usage` in the relay's databases), incremented at the end of each upload, and shown
//! by `device list`; refusals are counted in the `quota_refusals` metric.

use serde::{Deserialize, Serialize};

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;
/// Days of usage kept per device.
pub const KEEP_DAYS: i64 = 7;

/// Refusal reasons, recognised by [`quota_of`].
const NEW_DOCS_REASON: &str = "daily quota of new documents reached";
const BYTES_REASON: &str = "daily quota of stored bytes reached";

/// Limits per device and UTC day; 0 means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// New documents one device may create.
    pub new_documents_per_day: u64,
    /// Bytes of changes (as uploaded) one device may store.
    pub bytes_per_day: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            new_documents_per_day: 5_000,
            bytes_per_day: 256 << 20,
        }
    }
}

/// What a device stored on one day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// New documents.
    pub new_documents: u64,
    /// Bytes of changes.
    pub bytes: u64,
}

impl Usage {
    /// Adds one stored change.
    pub(crate) fn add(&mut self, new_document: bool, bytes: usize) {
        self.new_documents += u64::from(new_document);
        self.bytes = self.bytes.saturating_add(bytes as u64);
    }
}

/// The UTC day of a time in milliseconds.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

impl Quota {
    /// Whether a device that used `used` today may store one more change of `bytes` (a new
    /// document if `new_document`); the refusal's reason otherwise.
    pub(crate) fn check(
        &self,
        used: Usage,
        new_document: bool,
        bytes: usize,
    ) -> Result<(), String> {
        if new_document
            && self.new_documents_per_day > 0
            && used.new_documents >= self.new_documents_per_day
        {
            return Err(format!(
                "{NEW_DOCS_REASON} ({} a day); retry tomorrow (UTC) or ask IT to raise it",
                self.new_documents_per_day
            ));
        }
        if self.bytes_per_day > 0 && used.bytes.saturating_add(bytes as u64) > self.bytes_per_day {
            return Err(format!(
                "{BYTES_REASON} ({} bytes a day); retry tomorrow (UTC) or ask IT to raise it",
                self.bytes_per_day
            ));
        }
        Ok(())
    }
}

/// Which quota a refusal's reason names (`new_documents` or `bytes`), if any: for metrics.
pub fn quota_of(reason: &str) -> Option<&'static str> {
    if reason.starts_with(NEW_DOCS_REASON) {
        Some("new_documents")
    } else if reason.starts_with(BYTES_REASON) {
        Some("bytes")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_refuses_with_a_reason_metrics_recognise() {
        let q = Quota {
            new_documents_per_day: 2,
            bytes_per_day: 1_000,
        };
        let mut used = Usage::default();
        assert!(q.check(used, true, 400).is_ok());
        used.add(true, 400);
        used.add(true, 400);
        let docs = q.check(used, true, 10).unwrap_err();
        assert_eq!(quota_of(&docs), Some("new_documents"));
        assert!(q.check(used, false, 200).is_ok(), "edits still go through");
        let bytes = q.check(used, false, 201).unwrap_err();
        assert_eq!(quota_of(&bytes), Some("bytes"));
        assert_eq!(quota_of("document is outside the device's scopes"), None);
        let unlimited = Quota {
            new_documents_per_day: 0,
            bytes_per_day: 0,
        };
        assert!(unlimited.check(used, true, usize::MAX).is_ok());
    }

    #[test]
    fn days_are_utc_days() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_MS - 1), 0);
        assert_eq!(day_of(DAY_MS), 1);
        assert_eq!(day_of(-1), -1);
    }
}
