//! The ingest role: pushfan's public gRPC API.
//!
//! Three services from `proto/pushfan/v1` over the store, the broadcast ledger and the bus:
//! - `SubscriptionService` ([`subscriptions`]): subscribe, unsubscribe, get, list (paged over
//!   the store's shards), tag, untag, bulk import;
//! - `PublishService` ([`publish`]): validates a broadcast and queues one `PublishRequest` on the
//!   bus, at most once per idempotency key;
//! - `BroadcastService` ([`broadcasts`]): a broadcast's progress from the ledger, once or as a
//!   stream;
//!
//! plus `grpc.health.v1` and server reflection, so `grpcurl` works without `.proto` files.
//! [`serve`] mounts them on a listener the caller binds, and stops on the caller's signal.
//!
//! Every RPC authenticates first ([`ApiKeys`]: `authorization: Bearer <key>` names the tenant)
//! and then scopes every store and ledger call to that tenant. Validation ([`convert`], pure)
//! refuses bad input with INVALID_ARGUMENT naming the field before anything is written or
//! queued. Errors are one enum, [`IngestError`], mapped to gRPC codes in one place.
//!
//! Metrics: `pushfan_ingest_requests_total{method,code}` (code: `ok`, `invalid_argument`, …)
//! and `pushfan_ingest_request_seconds{method}`. Each RPC runs in an `rpc` span with `method`
//! and, once authenticated, `tenant`.
//!
//! Architecture invariant: ingest never logs an endpoint URL or an API key.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use pushfan_bus::Bus;
use pushfan_proto::v1::broadcast_service_server::BroadcastServiceServer;
use pushfan_proto::v1::publish_service_server::PublishServiceServer;
use pushfan_proto::v1::subscription_service_server::SubscriptionServiceServer;
use pushfan_store::ledger::BroadcastLedger;
use pushfan_store::{SubscriptionStore, TenantId};
use pushfan_webpush::EndpointPolicy;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataMap;
use tonic::transport::Server;

mod auth;
pub mod broadcast_id;
pub mod broadcasts;
pub mod convert;
mod error;
pub mod page_token;
pub mod publish;
pub mod subscriptions;
mod telemetry;

pub use crate::auth::{ApiKeyError, ApiKeys, MIN_KEY_LEN};
pub use crate::broadcasts::BroadcastApi;
pub use crate::error::IngestError;
pub use crate::publish::PublishApi;
pub use crate::subscriptions::SubscriptionApi;

/// What every ingest service works with. Cloning is cheap (shared handles).
pub struct IngestState<B> {
    /// Subscriptions, scoped per tenant.
    store: Arc<dyn SubscriptionStore>,
    /// Idempotency claims and broadcast progress.
    ledger: Arc<dyn BroadcastLedger>,
    /// Where publish requests are queued.
    bus: B,
    /// Which subscription endpoints are acceptable.
    policy: EndpointPolicy,
    /// API key digests and their tenants.
    api_keys: Arc<ApiKeys>,
    /// The VAPID key ids this deployment signs with.
    vapid_keys: Arc<BTreeSet<u32>>,
}

impl<B: Bus> IngestState<B> {
    /// The state of an ingest server. `store` and `ledger` are usually the same object (both
    /// stores implement both traits). `vapid_keys` are the ids of the VAPID keys the workers and
    /// gateways sign with: a subscription or publish naming another is refused here, not
    /// rejected push by push later.
    pub fn new(
        store: Arc<dyn SubscriptionStore>,
        ledger: Arc<dyn BroadcastLedger>,
        bus: B,
        api_keys: ApiKeys,
        policy: EndpointPolicy,
        vapid_keys: impl IntoIterator<Item = u32>,
    ) -> Self {
        let vapid_keys = Arc::new(vapid_keys.into_iter().collect());
        Self { store, ledger, bus, policy, api_keys: Arc::new(api_keys), vapid_keys }
    }

    /// Refuses `id`, named in `field`, unless it is one of this deployment's VAPID keys.
    fn check_vapid_key(&self, field: &str, id: u32) -> Result<(), IngestError> {
        if self.vapid_keys.contains(&id) {
            return Ok(());
        }
        let known: Vec<String> = self.vapid_keys.iter().map(u32::to_string).collect();
        Err(IngestError::invalid(
            field,
            format!("{id} is not one of this deployment's VAPID key ids ({})", known.join(", ")),
        ))
    }

    /// The tenant the request's API key belongs to; records it on the RPC's span.
    fn authenticate(&self, metadata: &MetadataMap) -> Result<TenantId, IngestError> {
        let tenant = self.api_keys.authenticate(metadata)?;
        telemetry::record_tenant(&tenant);
        Ok(tenant)
    }
}

impl<B: Clone> Clone for IngestState<B> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            ledger: Arc::clone(&self.ledger),
            bus: self.bus.clone(),
            policy: self.policy,
            api_keys: Arc::clone(&self.api_keys),
            vapid_keys: Arc::clone(&self.vapid_keys),
        }
    }
}

impl<B> fmt::Debug for IngestState<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestState")
            .field("store", &self.store)
            .field("ledger", &self.ledger)
            .field("policy", &self.policy)
            .field("api_keys", &self.api_keys)
            .field("vapid_keys", &self.vapid_keys)
            .finish_non_exhaustive()
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The embedded descriptor set could not be read (a build problem).
    #[error("reflection service: {0:?}")]
    Reflection(tonic_reflection::server::Error),
    /// The HTTP/2 server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the ingest API, health and reflection on `listener` until `shutdown` resolves, then
/// finishes the requests in flight and returns.
///
/// The caller binds the listener (tests bind `127.0.0.1:0`) and owns the shutdown signal, as in
/// mini-redis's `server::run`.
pub async fn serve<B: Bus>(
    listener: TcpListener,
    state: IngestState<B>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // Everything is served by this one process, so the services are healthy exactly when the
    // server is up; load balancers probe the empty service name.
    health.set_serving::<SubscriptionServiceServer<SubscriptionApi<B>>>().await;
    health.set_serving::<PublishServiceServer<PublishApi<B>>>().await;
    health.set_serving::<BroadcastServiceServer<BroadcastApi<B>>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pushfan_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(ServeError::Reflection)?;
    // Watches poll until their broadcast completes; they end when shutdown begins, so the
    // graceful shutdown below (which waits for open calls) cannot be held up by one.
    let (closing, closing_watches) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        closing.send_replace(true);
    };
    tracing::info!(address = ?listener.local_addr().ok(), "ingest serving");
    Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(SubscriptionServiceServer::new(SubscriptionApi::new(state.clone())))
        .add_service(PublishServiceServer::new(PublishApi::new(state.clone())))
        .add_service(BroadcastServiceServer::new(BroadcastApi::new(state, closing_watches)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
