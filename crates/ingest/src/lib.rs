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
//! [`serve`] mounts them on a listener the caller binds, and stops on the caller's signal;
//! [`serve_with`] adds TLS ([`TlsFiles`], optionally requiring client certificates) and other
//! [`Limits`] than the defaults.
//!
//! Every RPC passes the gate first (`gate`): the API key (`authorization: Bearer <key>`) names
//! the tenant, the tenant's request rate, a place among the concurrent requests, and the request
//! deadline, all before the request's body is read. Handlers then scope every store and ledger
//! call to that tenant. Validation ([`convert`], pure) refuses bad input with INVALID_ARGUMENT
//! naming the field before anything is written or queued. Errors are one enum, [`IngestError`],
//! mapped to gRPC codes in one place. Connections are bounded in number and must start HTTP/2
//! within a deadline (`conn`).
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
use tonic::transport::Server;
use tonic::Request;

mod auth;
pub mod broadcast_id;
pub mod broadcasts;
mod conn;
pub mod convert;
mod error;
mod gate;
pub mod limits;
pub mod page_token;
pub mod publish;
pub mod subscriptions;
mod telemetry;
mod tls;

pub use crate::auth::{ApiKeyError, ApiKeys, MIN_KEY_LEN};
pub use crate::broadcasts::BroadcastApi;
pub use crate::error::IngestError;
pub use crate::limits::{Limits, Rate, TenantRates};
pub use crate::publish::PublishApi;
pub use crate::subscriptions::SubscriptionApi;
pub use crate::tls::{TlsError, TlsFiles};

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

    /// The tenant the request acts for, as the gate found it; records it on the RPC's span. A
    /// service mounted without the gate authenticates the request's API key here instead.
    fn tenant<T>(&self, request: &Request<T>) -> Result<TenantId, IngestError> {
        let tenant = match request.extensions().get::<gate::Caller>() {
            Some(gate::Caller(tenant)) => tenant.clone(),
            None => self.api_keys.authenticate(request.metadata())?,
        };
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
            policy: self.policy.clone(),
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

/// How [`serve_with`] serves: TLS or not, and its limits.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// TLS, when set; plaintext HTTP/2 otherwise (for loopback, or behind a proxy that
    /// terminates TLS).
    pub tls: Option<TlsFiles>,
    /// Connection, concurrency, time, size and rate limits.
    pub limits: Limits,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The embedded descriptor set could not be read (a build problem).
    #[error("reflection service: {0:?}")]
    Reflection(tonic_reflection::server::Error),
    /// The TLS files could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The HTTP/2 server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the ingest API, health and reflection on `listener` until `shutdown` resolves, then
/// finishes the requests in flight and returns: plaintext, with the default [`Limits`].
///
/// The caller binds the listener (tests bind `127.0.0.1:0`) and owns the shutdown signal, as in
/// mini-redis's `server::run`.
pub async fn serve<B: Bus>(
    listener: TcpListener,
    state: IngestState<B>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_with(listener, state, ServeOptions::default(), shutdown).await
}

/// [`serve`] with TLS and limits of the caller's choosing.
pub async fn serve_with<B: Bus>(
    listener: TcpListener,
    state: IngestState<B>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let ServeOptions { tls, limits } = options;
    let tls = tls.as_ref().map(TlsFiles::acceptor).transpose()?;
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
    let mut closed = closing.subscribe();
    let shutdown = async move {
        shutdown.await;
        closing.send_replace(true);
    };
    let gate = Arc::new(gate::Gate::new(
        Arc::clone(&state.api_keys),
        limits::RateLimiter::new(&limits.tenant_rates, state.api_keys.tenants()),
        &limits,
    ));
    let max_message = limits.max_message_bytes;
    let subscriptions = SubscriptionServiceServer::new(SubscriptionApi::new(state.clone()))
        .max_decoding_message_size(max_message);
    let publish = PublishServiceServer::new(PublishApi::new(state.clone()))
        .max_decoding_message_size(max_message.min(limits::PUBLISH_MAX_MESSAGE_BYTES));
    let broadcasts = BroadcastServiceServer::new(BroadcastApi::new(state, closing_watches))
        .max_decoding_message_size(max_message.min(limits::BROADCAST_MAX_MESSAGE_BYTES));
    tracing::info!(address = ?listener.local_addr().ok(), tls = tls.is_some(), "ingest serving");
    let incoming = conn::incoming(listener, limits.max_connections, limits.handshake_timeout, tls);
    let serving = Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(gate.guard(subscriptions))
        .add_service(gate.guard(publish))
        .add_service(gate.guard(broadcasts))
        .serve_with_incoming_shutdown(incoming, shutdown);
    // A graceful shutdown waits for every connection to close, and an HTTP/2 connection closes
    // only once its client has answered the GOAWAY's ping; a client that never does would hold
    // the process forever. Requests in flight get the request timeout to finish, then whatever
    // is left is dropped.
    let grace = async {
        if closed.wait_for(|closing| *closing).await.is_err() {
            // The signal was dropped unsent: the server has stopped by itself.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(limits.request_timeout).await;
    };
    tokio::select! {
        served = serving => served?,
        () = grace => tracing::warn!("connections still open after the shutdown grace; closing them"),
    }
    Ok(())
}
