//! `pushfan.v1.SubscriptionService`: a tenant's subscriptions in the store.
//!
//! Subscribe and bulk import validate every field (see [`crate::convert`]) before writing, and
//! write through [`SubscriptionStore::import`], which replaces a re-subscribed endpoint's
//! record. Listing walks the shards in order and resumes from an opaque page token
//! ([`crate::page_token`]).

use pushfan_bus::Bus;
use pushfan_proto::v1::subscription_service_server::SubscriptionService;
use pushfan_proto::v1::{
    BulkImportRequest, BulkImportResponse, GetSubscriptionRequest, GetSubscriptionResponse, ImportError,
    ListSubscriptionsRequest, ListSubscriptionsResponse, SubscribeRequest, SubscribeResponse,
    TagSubscriptionsRequest, TagSubscriptionsResponse, UnsubscribeRequest, UnsubscribeResponse,
    UntagSubscriptionsRequest, UntagSubscriptionsResponse,
};
use pushfan_store::{Audience, ScanCursor, ShardId, StoreError, Subscription, SubscriptionStore};
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::error::IngestError;
use crate::page_token::PagePosition;
use crate::telemetry::observe;
use crate::IngestState;

/// `ListSubscriptions` page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest `ListSubscriptions` page.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Subscriptions a bulk import writes per store call: large enough to amortise the round trips,
/// small enough that one call stays well under a second.
pub const IMPORT_BATCH: usize = 1000;
/// Refused items a bulk import reports in detail; the rest are only counted.
pub const MAX_IMPORT_ERRORS: usize = 1000;

/// The subscription service.
#[derive(Debug, Clone)]
pub struct SubscriptionApi<B> {
    state: IngestState<B>,
}

impl<B: Bus> SubscriptionApi<B> {
    /// The service over `state`.
    pub fn new(state: IngestState<B>) -> Self {
        Self { state }
    }

    fn store(&self) -> &dyn SubscriptionStore {
        &*self.state.store
    }
}

#[tonic::async_trait]
impl<B: Bus> SubscriptionService for SubscriptionApi<B> {
    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<SubscribeResponse>, Status> {
        observe("Subscribe", async {
            let tenant = self.state.tenant(&request)?;
            let subscription =
                convert::subscription(request.into_inner(), &tenant, &self.state.policy, std::time::SystemTime::now())?;
            self.state.check_vapid_key("vapid_key_id", subscription.vapid_key.0)?;
            self.store().import(std::slice::from_ref(&subscription)).await?;
            tracing::debug!(id = %subscription.id, endpoint = %subscription.endpoint.redacted(), "subscribed");
            Ok(Response::new(SubscribeResponse { subscription_id: subscription.id.to_string() }))
        })
        .await
    }

    async fn unsubscribe(
        &self,
        request: Request<UnsubscribeRequest>,
    ) -> Result<Response<UnsubscribeResponse>, Status> {
        observe("Unsubscribe", async {
            let tenant = self.state.tenant(&request)?;
            let id = convert::subscription_id("subscription_id", &request.get_ref().subscription_id)?;
            let removed = self.store().remove(&tenant, &[id]).await?;
            Ok(Response::new(UnsubscribeResponse { existed: removed > 0 }))
        })
        .await
    }

    async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> Result<Response<GetSubscriptionResponse>, Status> {
        observe("GetSubscription", async {
            let tenant = self.state.tenant(&request)?;
            let hex = &request.get_ref().subscription_id;
            let id = convert::subscription_id("subscription_id", hex)?;
            let subscription = self
                .store()
                .get(&tenant, id)
                .await?
                .ok_or_else(|| IngestError::NotFound { what: "subscription", id: id.to_string() })?;
            Ok(Response::new(GetSubscriptionResponse {
                subscription: Some(convert::subscription_message(&subscription)),
            }))
        })
        .await
    }

    async fn list_subscriptions(
        &self,
        request: Request<ListSubscriptionsRequest>,
    ) -> Result<Response<ListSubscriptionsResponse>, Status> {
        observe("ListSubscriptions", async {
            let tenant = self.state.tenant(&request)?;
            let request = request.into_inner();
            let page_size = match usize::try_from(request.page_size).unwrap_or(usize::MAX) {
                0 => DEFAULT_PAGE_SIZE,
                size if size <= MAX_PAGE_SIZE => size,
                size => {
                    return Err(IngestError::invalid(
                        "page_size",
                        format!("must be at most 1000, got {size}"),
                    ))
                }
            };
            let audience = match request.topic.as_str() {
                "" => Audience::Everyone,
                name => Audience::Topic(convert::topic("topic", name)?),
            };
            let mut position = PagePosition::decode(&request.page_token, &audience)?;
            let shards = self.store().shard_count();
            if position.shard.0 >= shards.get() {
                return Err(IngestError::invalid("page_token", "names a shard this store does not have"));
            }
            let mut found = Vec::with_capacity(page_size);
            // Shards in order, each to its end, until the page is full: empty shards cost one
            // cheap scan each, and a full page may end mid-shard (the token keeps the cursor).
            loop {
                let wanted = page_size - found.len();
                let page = self
                    .store()
                    .scan_shard(&tenant, &audience, position.shard, position.cursor, wanted)
                    .await?;
                found.extend(page.subscriptions.iter().map(convert::subscription_message));
                match page.next {
                    Some(cursor) => position.cursor = cursor,
                    None if position.shard.0 + 1 < shards.get() => {
                        position =
                            PagePosition { shard: ShardId(position.shard.0 + 1), cursor: ScanCursor::START };
                    }
                    None => {
                        return Ok(Response::new(ListSubscriptionsResponse {
                            subscriptions: found,
                            next_page_token: String::new(),
                        }))
                    }
                }
                if found.len() >= page_size {
                    return Ok(Response::new(ListSubscriptionsResponse {
                        subscriptions: found,
                        next_page_token: position.encode(&audience),
                    }));
                }
            }
        })
        .await
    }

    async fn tag_subscriptions(
        &self,
        request: Request<TagSubscriptionsRequest>,
    ) -> Result<Response<TagSubscriptionsResponse>, Status> {
        observe("TagSubscriptions", async {
            let tenant = self.state.tenant(&request)?;
            let request = request.into_inner();
            let ids = convert::subscription_ids("subscription_ids", &request.subscription_ids)?;
            let topic = convert::topic("topic", &request.topic)?;
            let tagged = self.store().tag(&tenant, &ids, &topic).await.map_err(topic_limit)?;
            Ok(Response::new(TagSubscriptionsResponse { tagged: tagged as u64 }))
        })
        .await
    }

    async fn untag_subscriptions(
        &self,
        request: Request<UntagSubscriptionsRequest>,
    ) -> Result<Response<UntagSubscriptionsResponse>, Status> {
        observe("UntagSubscriptions", async {
            let tenant = self.state.tenant(&request)?;
            let request = request.into_inner();
            let ids = convert::subscription_ids("subscription_ids", &request.subscription_ids)?;
            let topic = convert::topic("topic", &request.topic)?;
            let untagged = self.store().untag(&tenant, &ids, &topic).await?;
            Ok(Response::new(UntagSubscriptionsResponse { untagged: untagged as u64 }))
        })
        .await
    }

    async fn bulk_import(
        &self,
        request: Request<Streaming<BulkImportRequest>>,
    ) -> Result<Response<BulkImportResponse>, Status> {
        observe("BulkImport", async {
            let tenant = self.state.tenant(&request)?;
            let mut stream = request.into_inner();
            let mut response = BulkImportResponse::default();
            let mut batch: Vec<Subscription> = Vec::with_capacity(IMPORT_BATCH);
            let mut index = 0_u64;
            while let Some(message) = stream.message().await.map_err(IngestError::RequestStream)? {
                for item in message.items {
                    let now = std::time::SystemTime::now();
                    let converted = convert::subscription(item, &tenant, &self.state.policy, now)
                        .and_then(|s| self.state.check_vapid_key("vapid_key_id", s.vapid_key.0).map(|()| s));
                    match converted {
                        Ok(subscription) => batch.push(subscription),
                        Err(IngestError::InvalidArgument { field, description }) => {
                            response.failed += 1;
                            if response.errors.len() < MAX_IMPORT_ERRORS {
                                response.errors.push(ImportError { index, field, description });
                            }
                        }
                        Err(other) => return Err(other),
                    }
                    index += 1;
                    if batch.len() >= IMPORT_BATCH {
                        response.imported += self.import(&batch, response.imported).await?;
                        batch.clear();
                    }
                }
            }
            if !batch.is_empty() {
                response.imported += self.import(&batch, response.imported).await?;
            }
            tracing::info!(imported = response.imported, failed = response.failed, "bulk import done");
            Ok(Response::new(response))
        })
        .await
    }
}

impl<B: Bus> SubscriptionApi<B> {
    /// Writes one import batch. A store failure ends the import; the log says how far it got,
    /// and since importing is idempotent (ids derive from endpoints) the client can resend all.
    async fn import(&self, batch: &[Subscription], imported_before: u64) -> Result<u64, IngestError> {
        self.store().import(batch).await.map(|n| n as u64).map_err(|error| {
            tracing::warn!(imported_before, %error, "bulk import stopped by the store");
            IngestError::Store(error)
        })
    }
}

/// A tag that would give a subscription a 33rd topic is the request's fault.
fn topic_limit(error: StoreError) -> IngestError {
    match error {
        StoreError::TooManyTopics { .. } => IngestError::invalid("topic", error.to_string()),
        other => IngestError::Store(other),
    }
}
