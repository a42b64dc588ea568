//! `pushfan.v1.PublishService`: validate a broadcast, give it an id, queue it on the bus.
//!
//! Idempotency. A publish with an idempotency key K is queued at most once per 24 hours, under
//! one broadcast id, even when the client retries after a timeout or a bus outage. The ledger
//! offers only claims (an atomic "set if absent" with a TTL), no release and no plain read, so
//! ingest uses two claims per key:
//!
//! 1. `publish:K` is claimed for a fresh broadcast id *before* publishing. The claim is what
//!    makes concurrent duplicates safe: only the request that wins it publishes a new id, so two
//!    racing requests can never queue two broadcasts (a double send to every subscriber, the
//!    worst outcome).
//! 2. `published:K` is claimed only *after* the bus took the message: it records that the
//!    broadcast is really queued.
//!
//! A request that finds `publish:K` taken then asks `published:K`: taken means the first
//! attempt got through, so it answers with that broadcast id and queues nothing. Free means the
//! first attempt's bus send failed (or its process died before recording it), so this request
//! queues the same broadcast id again. The planner then sees one broadcast id twice, exactly as
//! after a bus redelivery: the ledger counts it once, and, as with any redelivery on an
//! at-least-once bus, some of its pushes may go out twice. That is the price of never answering
//! with a broadcast that was not queued.
//!
//! A retry whose own send fails releases the `published:K` claim it made while checking, so a
//! third attempt queues the broadcast again rather than being wrongly deduplicated.
//!
//! Why not publish first and claim after: two concurrent duplicates would both publish before
//! either claimed. Why not claim once: after a failed send, every retry within 24 hours would be
//! answered with an id that was never queued. What remains: a retry racing a first attempt that
//! is still sending (a window of one bus send) queues the id twice, as above; and a request
//! racing a retry whose send then fails may be answered with the id in that window.

use std::time::{Duration, SystemTime};

use pushfan_bus::messages as bus;
use pushfan_bus::{Bus, MessageContext};
use pushfan_proto::v1::publish_service_server::PublishService;
use pushfan_proto::v1::{PublishRequest, PublishResponse};
use pushfan_store::ledger::BroadcastId;
use pushfan_store::TenantId;
use tonic::{Request, Response, Status};

use crate::broadcast_id::new_broadcast_id;
use crate::convert;
use crate::error::IngestError;
use crate::telemetry::observe;
use crate::IngestState;

/// How long an idempotency key deduplicates publishes.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The publish service.
#[derive(Debug, Clone)]
pub struct PublishApi<B> {
    state: IngestState<B>,
}

impl<B: Bus> PublishApi<B> {
    /// The service over `state`.
    pub fn new(state: IngestState<B>) -> Self {
        Self { state }
    }

    /// Queues `message` (broadcast id filled in); see the module docs for the idempotency rules.
    async fn publish(
        &self,
        tenant: &TenantId,
        mut message: bus::PublishRequest,
    ) -> Result<String, IngestError> {
        let now = SystemTime::now();
        let fresh = BroadcastId::new(&new_broadcast_id(now)?)?;
        if message.idempotency_key.is_empty() {
            message.broadcast_id = fresh.to_string();
            self.send(&message).await?;
            return Ok(message.broadcast_id);
        }
        let ledger = &self.state.ledger;
        let key = &message.idempotency_key;
        let (pending, published) = (format!("publish:{key}"), format!("published:{key}"));
        let broadcast = match ledger.claim_idempotency_key(tenant, &pending, &fresh, IDEMPOTENCY_TTL).await? {
            None => fresh,
            Some(earlier) => {
                if ledger
                    .claim_idempotency_key(tenant, &published, &earlier, IDEMPOTENCY_TTL)
                    .await?
                    .is_some()
                {
                    tracing::info!(broadcast = %earlier, "repeated publish: answered with the earlier broadcast");
                    return Ok(earlier.to_string());
                }
                tracing::info!(broadcast = %earlier, "repeated publish whose first send failed: queueing it again");
                message.broadcast_id = earlier.to_string();
                if let Err(error) = self.send(&message).await {
                    // Checking `published:K` claimed it; give it back, or the next retry would be
                    // answered with a broadcast that was never queued.
                    if let Err(release) = ledger.release_idempotency_key(tenant, &published, &earlier).await {
                        tracing::warn!(broadcast = %earlier, error = %release, "could not release a failed publish's claim");
                    }
                    return Err(error);
                }
                return Ok(message.broadcast_id);
            }
        };
        message.broadcast_id = broadcast.to_string();
        self.send(&message).await?;
        // The broadcast is queued whatever happens next; failing to record that only means a
        // retry would queue it again (a redelivery, see the module docs), so it is logged and the
        // client still gets its broadcast id.
        if let Err(error) =
            ledger.claim_idempotency_key(tenant, &published, &broadcast, IDEMPOTENCY_TTL).await
        {
            tracing::warn!(%broadcast, %error, "broadcast queued but not recorded as published");
        }
        Ok(message.broadcast_id)
    }

    async fn send(&self, message: &bus::PublishRequest) -> Result<(), IngestError> {
        self.state.bus.publish(message, &MessageContext::default()).await?;
        tracing::info!(broadcast = %message.broadcast_id, bytes = message.payload.len(), "broadcast queued");
        Ok(())
    }
}

#[tonic::async_trait]
impl<B: Bus> PublishService for PublishApi<B> {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        observe("Publish", async {
            let tenant = self.state.tenant(&request)?;
            if let Some(key) = request.get_ref().vapid_key_id {
                self.state.check_vapid_key("vapid_key_id", key)?;
            }
            let message = convert::publish(request.into_inner(), &tenant, SystemTime::now())?;
            let broadcast_id = PublishApi::publish(self, &tenant, message).await?;
            Ok(Response::new(PublishResponse { broadcast_id }))
        })
        .await
    }
}
