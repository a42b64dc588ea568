//! Metrics the store emits at each stage boundary (`metrics` facade; the binary installs the
//! exporter). Every counter carries `backend` = `redis` or `embedded`.
//!
//! - `pushfan_store_imported_total`: subscriptions written by `import`
//! - `pushfan_store_scanned_total`: subscriptions returned by `scan_shard`
//! - `pushfan_store_scan_restarts_total`: shard scans started again from the shard's start
//!   because the Redis server that issued their cursor restarted or the shard moved
//! - `pushfan_store_removed_total`: subscriptions deleted by `remove`
//! - `pushfan_store_retagged_total`: subscriptions whose topics `tag`/`untag` changed
//! - `pushfan_store_outcomes_total`: delivery outcomes recorded
//! - `pushfan_store_progress_steps_total`: ledger progress steps, labelled `applied` = `true`, or
//!   `false` for a repeat the ledger ignored (redelivered work)
//! - `pushfan_store_errors_total`: failed calls, labelled `op` and `kind` ([`StoreError::kind`])

use crate::error::StoreError;

pub(crate) const IMPORTED: &str = "pushfan_store_imported_total";
pub(crate) const SCANNED: &str = "pushfan_store_scanned_total";
pub(crate) const SCAN_RESTARTS: &str = "pushfan_store_scan_restarts_total";
pub(crate) const REMOVED: &str = "pushfan_store_removed_total";
pub(crate) const RETAGGED: &str = "pushfan_store_retagged_total";
pub(crate) const OUTCOMES: &str = "pushfan_store_outcomes_total";
const PROGRESS_STEPS: &str = "pushfan_store_progress_steps_total";
const ERRORS: &str = "pushfan_store_errors_total";

/// Adds `n` to counter `name` of `backend`.
pub(crate) fn count(name: &'static str, backend: &'static str, n: usize) {
    metrics::counter!(name, "backend" => backend).increment(n as u64);
}

/// Counts one progress step of `backend`, applied or ignored as a repeat.
pub(crate) fn progress_step(backend: &'static str, applied: bool) {
    let applied = if applied { "true" } else { "false" };
    metrics::counter!(PROGRESS_STEPS, "backend" => backend, "applied" => applied).increment(1);
}

/// Counts `result` if it is an error, and passes it on.
pub(crate) fn observe<T>(
    backend: &'static str,
    op: &'static str,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    if let Err(error) = &result {
        metrics::counter!(ERRORS, "backend" => backend, "op" => op, "kind" => error.kind()).increment(1);
        tracing::warn!(backend, op, error = %error, "store call failed");
    }
    result
}
