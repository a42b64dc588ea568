//! Per-RPC observability: one span per call (method, and the tenant once authenticated), one
//! count per outcome, and a log line for failures that are ours rather than the caller's.
//!
//! Metrics: `pushfan_ingest_requests_total{method,code}` and
//! `pushfan_ingest_request_seconds{method}`. Never an endpoint URL or an API key in a span or a
//! log line: endpoints are secret capability URLs (log `Endpoint::redacted()` at most).

use std::future::Future;
use std::time::Instant;

use metrics::{counter, histogram};
use pushfan_store::TenantId;
use tonic::{Code, Status};
use tracing::{field, Instrument};

use crate::error::{code_label, IngestError};

/// Runs one RPC's handler inside its span, counts the outcome and maps the error to a status.
pub(crate) async fn observe<T>(
    method: &'static str,
    handler: impl Future<Output = Result<T, IngestError>>,
) -> Result<T, Status> {
    let span = tracing::info_span!("rpc", method, tenant = field::Empty);
    let started = Instant::now();
    let result = handler.instrument(span.clone()).await;
    let code = result.as_ref().map_or_else(IngestError::code, |_| Code::Ok);
    counter!("pushfan_ingest_requests_total", "method" => method, "code" => code_label(code)).increment(1);
    histogram!("pushfan_ingest_request_seconds", "method" => method).record(started.elapsed().as_secs_f64());
    result.map_err(|error| {
        let _entered = span.enter();
        match error.code() {
            // Outages and bugs: someone should look.
            Code::Unavailable | Code::Internal => tracing::warn!(%error, "request failed"),
            // The caller's mistake: useful while debugging a client, noise otherwise.
            _ => tracing::debug!(%error, "request refused"),
        }
        error.to_status()
    })
}

/// Records the authenticated tenant on the current RPC span.
pub(crate) fn record_tenant(tenant: &TenantId) {
    tracing::Span::current().record("tenant", tenant.as_str());
}

/// Counts a request the gate refused before its handler ran, under the same metric as the
/// handlers' answers.
pub(crate) fn count_refusal(method: &'static str, code: Code) {
    counter!("pushfan_ingest_requests_total", "method" => method, "code" => code_label(code)).increment(1);
}
