//! `pushfan.v1.BroadcastService`: a broadcast's progress as the ledger counts it.
//!
//! The ledger has no change feed, so `WatchBroadcast` polls it (every [`WATCH_INTERVAL`]) and
//! sends only when something changed. A poll is one small ledger read per watcher, cheap next to
//! the broadcast it watches. The stream lives as long as the client listens (dropping the call
//! drops the stream and its polling), until the broadcast completes, or until the server starts
//! shutting down: a graceful shutdown waits for open calls, so a watch of a broadcast that never
//! completes must not hold it up. It then ends with UNAVAILABLE, and the client re-watches
//! elsewhere.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use pushfan_bus::Bus;
use pushfan_proto::v1::broadcast_service_server::BroadcastService;
use pushfan_proto::v1::{
    GetBroadcastRequest, GetBroadcastResponse, WatchBroadcastRequest, WatchBroadcastResponse,
};
use pushfan_store::ledger::{BroadcastId, BroadcastStatus};
use pushfan_store::TenantId;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::error::IngestError;
use crate::telemetry::observe;
use crate::IngestState;

/// How often a watch reads the ledger.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// How long a watch waits for a broadcast to appear (the planner creates it shortly after the
/// publish) before answering NOT_FOUND.
pub const WATCH_APPEAR_TIMEOUT: Duration = Duration::from_secs(30);

/// The stream `WatchBroadcast` answers with.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchBroadcastResponse, Status>> + Send>>;

/// The broadcast service.
#[derive(Debug, Clone)]
pub struct BroadcastApi<B> {
    state: IngestState<B>,
    /// Turns `true` when the server starts shutting down; ends every watch.
    closing: watch::Receiver<bool>,
}

impl<B: Bus> BroadcastApi<B> {
    /// The service over `state`; watches end once `closing` turns `true`.
    pub fn new(state: IngestState<B>, closing: watch::Receiver<bool>) -> Self {
        Self { state, closing }
    }
}

fn broadcast_id(hex: &str) -> Result<BroadcastId, IngestError> {
    BroadcastId::new(hex).map_err(|error| IngestError::invalid("broadcast_id", error.to_string()))
}

fn not_found(id: &BroadcastId) -> IngestError {
    IngestError::NotFound { what: "broadcast", id: id.to_string() }
}

/// Where a watch is.
struct Watch<B> {
    state: IngestState<B>,
    tenant: TenantId,
    id: BroadcastId,
    /// The last status sent, to send only changes.
    last: Option<BroadcastStatus>,
    /// Polls made while the broadcast did not exist yet.
    polls_missing: u32,
    /// Set after the final message (complete, or an error).
    done: bool,
    /// The server's shutdown signal.
    closing: watch::Receiver<bool>,
}

impl<B: Bus> Watch<B> {
    /// The next message: waits until the status differs from the last one sent.
    async fn next(&mut self) -> Option<Result<WatchBroadcastResponse, Status>> {
        if self.done {
            return None;
        }
        let max_missing = (WATCH_APPEAR_TIMEOUT.as_millis() / WATCH_INTERVAL.as_millis()) as u32;
        loop {
            match self.state.ledger.status(&self.tenant, &self.id).await {
                Err(error) => {
                    self.done = true;
                    tracing::warn!(broadcast = %self.id, %error, "watch ended by the ledger");
                    return Some(Err(IngestError::Store(error).to_status()));
                }
                Ok(None) if self.polls_missing >= max_missing => {
                    self.done = true;
                    return Some(Err(not_found(&self.id).to_status()));
                }
                Ok(None) => self.polls_missing += 1,
                Ok(Some(status)) if self.last.as_ref() != Some(&status) => {
                    self.done = status.is_complete();
                    let broadcast = convert::broadcast_message(self.id.as_str(), &status);
                    self.last = Some(status);
                    return Some(Ok(WatchBroadcastResponse { broadcast: Some(broadcast) }));
                }
                Ok(Some(_)) => {}
            }
            tokio::select! {
                () = tokio::time::sleep(WATCH_INTERVAL) => {}
                // An error means the server is gone altogether: stop as well.
                _ = self.closing.wait_for(|closing| *closing) => {
                    self.done = true;
                    return Some(Err(Status::unavailable("the server is shutting down; watch again")));
                }
            }
        }
    }
}

#[tonic::async_trait]
impl<B: Bus> BroadcastService for BroadcastApi<B> {
    async fn get_broadcast(
        &self,
        request: Request<GetBroadcastRequest>,
    ) -> Result<Response<GetBroadcastResponse>, Status> {
        observe("GetBroadcast", async {
            let tenant = self.state.tenant(&request)?;
            let id = broadcast_id(&request.get_ref().broadcast_id)?;
            let status = self.state.ledger.status(&tenant, &id).await?.ok_or_else(|| not_found(&id))?;
            Ok(Response::new(GetBroadcastResponse {
                broadcast: Some(convert::broadcast_message(id.as_str(), &status)),
            }))
        })
        .await
    }

    type WatchBroadcastStream = WatchStream;

    async fn watch_broadcast(
        &self,
        request: Request<WatchBroadcastRequest>,
    ) -> Result<Response<Self::WatchBroadcastStream>, Status> {
        observe("WatchBroadcast", async {
            let tenant = self.state.tenant(&request)?;
            let id = broadcast_id(&request.get_ref().broadcast_id)?;
            let watch = Watch {
                state: self.state.clone(),
                tenant,
                id,
                last: None,
                polls_missing: 0,
                done: false,
                closing: self.closing.clone(),
            };
            let stream = futures::stream::unfold(watch, |mut watch| async move {
                let item = watch.next().await?;
                Some((item, watch))
            });
            Ok(Response::new(Box::pin(stream) as WatchStream))
        })
        .await
    }
}
